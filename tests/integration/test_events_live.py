"""The event stream of a saga run by real workers, woken by the Redis stream: an API served by
uvicorn on PostgreSQL and a private Redis, one `sagakit worker`, a client reading SSE."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from sagakit import Settings, System
from sagakit.api import create_app
from sagakit.store import HistoryRecord
from tests.integration.conftest import worker_env
from tests.support.cluster import Cluster
from tests.support.redis_server import RedisServer
from tests.support.served import Event, EventStream, serve

pytestmark = [pytest.mark.integration, pytest.mark.postgres, pytest.mark.redis]
READ_DELAY = 0.5
"""How long the server's first read of the log takes here (a busy database)."""


@pytest.fixture(scope="module")
def stack(
    pg_databases: Callable[[], str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[httpx.Client, System]]:
    workdir = tmp_path_factory.mktemp("events-live")
    broker = RedisServer(workdir)
    broker.start()
    env = worker_env(pg_databases(), broker.url)  # the workers publish to sagakit:events
    settings = Settings(
        database_url=env["SAGAKIT_DATABASE_URL"],
        broker_url=broker.url,
        redis_url=broker.url,
        imports=["tests.support.workload"],
        sse_ping_seconds=1,
        sse_max_seconds=30,
    )
    system = System(settings)
    workers = Cluster(env, Path(workdir))
    try:
        workers.start("-c", "1")
        with (
            serve(create_app(system=system)) as base,
            httpx.Client(base_url=base, timeout=10) as http,
        ):
            yield http, system
    finally:
        workers.stop()
        system.close()
        broker.stop()


def read(http: httpx.Client, saga_id: str) -> list[tuple[Event, float]]:
    """Every named event with its wall-clock arrival, until the end (30 s at most)."""
    got: list[tuple[Event, float]] = []
    deadline = time.monotonic() + 30
    with http.stream("GET", f"/api/sagas/{saga_id}/events") as response:
        assert response.status_code == 200
        for event in EventStream(response):
            assert time.monotonic() < deadline, "no end in sight"
            if event.comment is None:
                got.append((event, time.time()))
                if event.event == "end":
                    break
    return got


def lateness(events: list[tuple[Event, float]]) -> dict[tuple[str, str | None], float]:
    """Seconds from each transition's entry to its arrival at the client."""
    late = {}
    for event, arrived in events:
        if event.event == "transition":
            data: dict[str, Any] = json.loads(event.data)
            late[(data["event"], data["step"])] = (
                arrived - datetime.fromisoformat(data["at"]).timestamp()
            )
    return late


def test_a_live_stream_gets_each_transition_once_in_order(
    stack: tuple[httpx.Client, System],
) -> None:
    http, system = stack
    started = http.post("/api/sagas", json={"type": "linear", "input": {"faults": {}}})
    saga_id = started.json()["id"]

    events = read(http, saga_id)

    transitions = [e for e, _ in events if e.event == "transition"]
    assert [int(e.id or "") for e in transitions] == [h.id for h in system.queries.history(saga_id)]
    assert [e.event for e, _ in events][-1] == "end"
    assert json.loads(events[-1][0].data) == {"id": saga_id, "status": "completed"}


def test_an_entry_written_while_the_server_reads_the_log_arrives_without_waiting(
    stack: tuple[httpx.Client, System], monkeypatch: pytest.MonkeyPatch
) -> None:
    http, system = stack
    queries = system.queries
    read_history = queries.history
    slowed: list[str] = []

    def slow_first_read(saga_id: str, *, after: int = 0) -> list[HistoryRecord]:
        rows = read_history(saga_id, after=after)
        if not slowed:  # meanwhile the worker finishes step a and Redis rings for it
            slowed.append(saga_id)
            time.sleep(READ_DELAY)
        return rows

    # a ends during the slow read; b takes long: nothing else rings until it is done.
    body = {"type": "linear", "input": {"faults": {"a": ["slow:0.2"], "b": ["slow:3"]}}}
    saga_id = http.post("/api/sagas", json=body).json()["id"]
    monkeypatch.setattr(queries, "history", slow_first_read)

    events = read(http, saga_id)

    assert slowed == [saga_id]
    late = lateness(events)
    # Step a's outcome was written during the slow read: it comes right after that read,
    # not when b's outcome rings the bell again seconds later.
    assert late[("step_completed", "a")] < READ_DELAY + 1.0, late
    assert late[("step_completed", "b")] < 1.0, late
