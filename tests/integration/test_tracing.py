"""OpenTelemetry on real workers: one trace per saga, from the HTTP start request down to
every step attempt and compensation, the spans collected by the SDK's in-memory exporter in
each process (`tests.support.traced`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sagakit import Settings, System
from sagakit.api import create_app
from tests.integration.conftest import worker_env
from tests.support.api_app import TestClient
from tests.support.cluster import Cluster, wait_for
from tests.support.redis_server import RedisServer

pytestmark = [pytest.mark.integration, pytest.mark.postgres, pytest.mark.redis]

IMPORTS = "tests.support.workload,tests.support.traced"


@pytest.fixture(scope="module")
def traced(
    pg_databases: Callable[[], str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[TestClient, Cluster, Path]]:
    pytest.importorskip("opentelemetry.sdk")
    workdir = tmp_path_factory.mktemp("traced")
    broker = RedisServer(workdir)
    broker.start()
    spans = workdir / "spans.jsonl"
    env = worker_env(pg_databases(), broker.url)
    env.update(SAGAKIT_IMPORTS=IMPORTS, SAGAKIT_TRACING="1", SAGAKIT_TEST_SPANS=str(spans))
    cluster = Cluster(env, workdir)
    system = None
    try:
        cluster.start("-c", "2")
        system = System(
            Settings(
                database_url=env["SAGAKIT_DATABASE_URL"],
                broker_url=broker.url,
                imports=IMPORTS.split(","),
                redrive_after=4.0,
                timeout_grace=1.0,
                tracing=True,
            )
        )
        with TestClient(create_app(system=system)) as http:
            yield http, cluster, spans
    finally:
        cluster.stop()
        broker.stop()
        _uninstrument()


def _uninstrument() -> None:
    """Leave the rest of the session's processes untraced (the instrumentations are global)."""
    from opentelemetry.instrumentation.celery import CeleryInstrumentor
    from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor

    for instrumentor in (CeleryInstrumentor(), SQLAlchemyInstrumentor()):
        if instrumentor.is_instrumented_by_opentelemetry:
            instrumentor.uninstrument()


def _attempts(found: list[dict[str, Any]], saga_id: str) -> list[dict[str, Any]]:
    return [
        s
        for s in found
        if s["attributes"].get("sagakit.saga.id") == saga_id
        and "sagakit.attempt" in s["attributes"]
    ]


def test_a_saga_is_one_trace_from_the_start_request_to_its_last_compensation(
    traced: tuple[TestClient, Cluster, Path],
) -> None:
    from tests.support.traced import spans

    http, cluster, path = traced
    # b fails once (its retry is sent by a sweeper, after its delay), d refuses: c, b and a
    # are compensated.
    faults = {"b": ["transient:1"], "d": ["fail"]}
    response = http.post("/api/sagas", json={"type": "linear", "input": {"faults": faults}})
    assert response.status_code == 202, response.text
    saga_id = response.json()["id"]
    wait_for(
        lambda: http.get(f"/api/sagas/{saga_id}").json()["status"] == "compensated",
        60,
        "the saga to be compensated",
    )
    expected = {
        ("step a", 1, "action", "succeeded"),
        ("step b", 1, "action", "failed"),
        ("step b", 2, "action", "succeeded"),
        ("step c", 1, "action", "succeeded"),
        ("step d", 1, "action", "failed"),
        ("compensate c", 1, "compensation", "succeeded"),
        ("compensate b", 1, "compensation", "succeeded"),
        ("compensate a", 1, "compensation", "succeeded"),
    }

    def attempts() -> list[dict[str, Any]]:
        found = _attempts(spans(path), saga_id)
        return found if len(found) >= len(expected) else []

    found = wait_for(attempts, 20, f"the attempts' spans\n{cluster.logs()}")
    every = spans(path)
    (start,) = [s for s in every if s["name"] == "start linear"]
    request = next(s for s in every if s["span_id"] == start["parent_id"])
    assert request["name"].startswith("POST /api/sagas"), request
    trace_id = request["trace_id"]

    got = {
        (
            s["name"],
            s["attributes"]["sagakit.attempt"],
            s["attributes"]["sagakit.direction"],
            s["attributes"]["sagakit.outcome"],
        )
        for s in found
    }
    assert got == expected
    assert len(found) == len(expected)
    assert {s["trace_id"] for s in found} == {trace_id}
    assert all(s["attributes"]["sagakit.saga.type"] == "linear" for s in found)
    assert {s["status"] for s in found if s["attributes"]["sagakit.outcome"] == "failed"} == {
        "ERROR"
    }
    assert {s["pid"] for s in found}.isdisjoint({start["pid"]})  # run by the workers

    by_id = {s["span_id"]: s for s in every}
    # Each attempt runs under Celery's own span of the task (its instrumentation), whose
    # parent is what sent the message: the start for a, the attempt before for the next...
    a = next(s for s in found if s["name"] == "step a")
    celery_a = by_id[a["parent_id"]]
    assert celery_a["name"] == "run/work.a" and celery_a["parent_id"] == start["span_id"]
    c = next(s for s in found if s["name"] == "step c")
    b2 = next(s for s in found if s["name"] == "step b" and s["attributes"]["sagakit.attempt"] == 2)
    assert by_id[c["parent_id"]]["parent_id"] == b2["span_id"]
    # ...and the start again for b's retry, which a sweeper sent after its delay: it read
    # the saga's trace from the history.
    assert by_id[b2["parent_id"]]["parent_id"] == start["span_id"]
    history = http.get(f"/api/sagas/{saga_id}").json()["history"]
    started = next(h for h in history if h["event"] == "saga_started")
    assert started["detail"]["trace"].startswith(f"00-{trace_id}-{start['span_id']}-")
