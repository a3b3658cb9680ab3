"""OpenTelemetry on an existing task's worker: the shop's unchanged tasks, run as steps, are
their sagas' attempts in the saga's one trace (Celery's span of each, with its attributes)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sagakit import Settings, System
from tests.integration.conftest import worker_env
from tests.support.client import Client
from tests.support.cluster import ROOT, Cluster, wait_for
from tests.support.redis_server import RedisServer

pytestmark = [pytest.mark.integration, pytest.mark.postgres, pytest.mark.redis]
CELERY = str(Path(sys.executable).parent / "celery")


@pytest.fixture(scope="module")
def shop(
    pg_databases: Callable[[], str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Client, Cluster, Path]]:
    pytest.importorskip("opentelemetry.sdk")
    workdir = tmp_path_factory.mktemp("traced-shop")
    broker = RedisServer(workdir)
    broker.start()
    spans = workdir / "spans.jsonl"
    cluster = Cluster(worker_env(pg_databases(), broker.url), workdir)
    cluster.env.update(
        SAGAKIT_IMPORTS="tests.support.shop_sagas",
        SAGAKIT_TRACING="1",
        SAGAKIT_TEST_SPANS=str(spans),
        SHOP_BROKER_URL=broker.url,
    )
    # The test's System first: it migrates the fresh saga log the shop's worker writes to.
    system = System(
        Settings(
            database_url=cluster.env["SAGAKIT_DATABASE_URL"],
            broker_url=broker.url,
            imports=["tests.support.shop_sagas", "tests.support.traced"],
            tracing=True,
        )
    )
    command = [CELERY, "-A", "tests.support.traced_shop", "worker", "-Q", "shop,payments"]
    command += ["-c", "2", "-n", "shop@%h", "--without-mingle", "--without-gossip", "-l", "INFO"]
    log_path = workdir / "shop.log"
    with log_path.open("wb") as log:
        service = subprocess.Popen(
            command,
            cwd=ROOT,
            env=cluster.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    cluster.procs.append(service)
    try:
        wait_for(lambda: b" ready." in log_path.read_bytes(), 60, "the shop's worker")
        yield Client(system), cluster, spans
    finally:
        system.close()
        cluster.stop()
        broker.stop()
        _uninstrument()


def _uninstrument() -> None:
    from opentelemetry.instrumentation.celery import CeleryInstrumentor
    from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor

    for instrumentor in (CeleryInstrumentor(), SQLAlchemyInstrumentor()):
        if instrumentor.is_instrumented_by_opentelemetry:
            instrumentor.uninstrument()


def test_an_existing_tasks_attempt_is_its_celery_span_on_the_sagas_trace(
    shop: tuple[Client, Cluster, Path],
) -> None:
    from tests.support.traced import spans

    client, cluster, path = shop
    input = {"sku": "book", "qty": 2, "amount": 30, "address": "home", "flaky": False}
    saga_id = client.start("order", input).saga_id
    assert client.wait(saga_id, timeout=60).status == "completed", cluster.logs()

    def attempts() -> list[dict[str, Any]]:
        found = [s for s in spans(path) if s["attributes"].get("sagakit.saga.id") == saga_id]
        return found if len(found) >= 4 else []  # the start and three attempts

    found = wait_for(attempts, 20, f"the attempts' spans\n{cluster.logs()}")
    (start,) = [s for s in found if s["name"] == "start order"]
    runs = {s["attributes"]["sagakit.step"]: s for s in found if s is not start}
    assert {step: s["name"] for step, s in runs.items()} == {
        "reserve": "run/shop.reserve",
        "charge": "run/shop.charge",
        "ship": "run/shop.ship",
    }
    assert {s["trace_id"] for s in found} == {start["trace_id"]}
    assert {s["attributes"]["sagakit.outcome"] for s in runs.values()} == {"succeeded"}
    # Sent by the shop's worker from outside a sagakit span: parented on the start.
    assert {s["parent_id"] for s in runs.values()} == {start["span_id"]}
