"""GET /api/sagas/{id}/events read by an HTTP client from a running server, as a browser would.

The embedded app (SQLite, in-process worker, the SLAM example) runs under uvicorn on a real
port; its keep-alive interval is set small so that an idle stream shows its comments.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.support.cluster import wait_for
from tests.support.served import Event, EventStream, embedded_server

MISSION = {"robots": 2, "area": "warehouse"}
SLOW = 1.5
"""Seconds the slow mission's plan_routes sleeps: the stream is idle meanwhile."""
SLOW_MISSION = {"robots": 1, "area": "depot", "faults": {"slow": {"plan_routes": SLOW}}}
PING = 0.2
MAX_EVENTS = 5000


@pytest.fixture(scope="module")
def http(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    with (
        embedded_server(
            tmp_path_factory.mktemp("events"), sse_ping_seconds=PING, sse_max_seconds=30
        ) as base,
        httpx.Client(base_url=base, timeout=10.0) as client,
    ):
        yield client


def start(http: httpx.Client, saga_input: dict[str, Any]) -> str:
    response = http.post("/api/sagas", json={"type": "slam", "input": saga_input})
    assert response.status_code == 202, response.text
    saga_id: str = response.json()["id"]
    return saga_id


def history_ids(http: httpx.Client, saga_id: str) -> list[int]:
    response = http.get(f"/api/sagas/{saga_id}")
    assert response.status_code == 200, response.text
    return [h["id"] for h in response.json()["history"]]


def settled(http: httpx.Client, saga_id: str) -> bool:
    status = http.get(f"/api/sagas/{saga_id}").json()["status"]
    return status in ("completed", "compensated", "failed")


def read(
    http: httpx.Client,
    saga_id: str,
    *,
    last_event_id: int | None = None,
    until: Callable[[list[Event]], bool] | None = None,
) -> list[Event]:
    """Events and comments until the server closes the stream (or `until` says stop, and the
    client hangs up). Bounded by MAX_EVENTS, a 30 s deadline and a 10 s read timeout."""
    headers = {} if last_event_id is None else {"Last-Event-ID": str(last_event_id)}
    deadline = time.monotonic() + 30
    got: list[Event] = []
    with http.stream("GET", f"/api/sagas/{saga_id}/events", headers=headers) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        for event in EventStream(response):
            got.append(event)
            assert len(got) < MAX_EVENTS and time.monotonic() < deadline, "no end in sight"
            if until is not None and until(got):
                break
    return got


def transitions(events: list[Event]) -> list[Event]:
    return [e for e in events if e.comment is None and e.event == "transition"]


def ids(events: list[Event]) -> list[int]:
    return [int(e.id or "") for e in transitions(events)]


def data(event: Event) -> dict[str, Any]:
    value: dict[str, Any] = json.loads(event.data)
    return value


def test_a_reader_gets_every_transition_once_in_order_with_its_id_then_one_end(
    http: httpx.Client,
) -> None:
    saga_id = start(http, MISSION)

    events = read(http, saga_id)  # from the start, live, until the server closes it

    named = [e for e in events if e.comment is None]
    assert [e.event for e in named[:-1]] == ["transition"] * (len(named) - 1)
    assert named[-1].event == "end" and named[-1].id is None
    assert data(named[-1]) == {"id": saga_id, "status": "completed"}
    assert all(e.id for e in transitions(events))
    assert [data(e)["id"] for e in transitions(events)] == ids(events)
    assert ids(events) == history_ids(http, saga_id)  # each once, in order, none missing
    assert ids(events) == sorted(set(ids(events)))


def test_a_reader_that_reconnects_with_last_event_id_gets_exactly_what_it_missed(
    http: httpx.Client,
) -> None:
    saga_id = start(http, SLOW_MISSION)

    def planning(events: list[Event]) -> bool:
        return any(
            sent["step"] == "plan_routes"
            for e in transitions(events)
            for sent in (data(e)["detail"] or {}).get("scheduled", ())
        )

    first = read(http, saga_id, until=planning)  # then the client hangs up
    seen = ids(first)
    assert seen and not settled(http, saga_id)
    # The saga goes on while nobody listens: plan_routes finishes, the robots explore.
    wait_for(
        lambda: len(history_ids(http, saga_id)) >= len(seen) + 3,
        SLOW + 20,
        "entries the client does not see",
    )

    second = read(http, saga_id, last_event_id=seen[-1])

    assert not set(seen) & set(ids(second)), "entries sent twice"
    assert seen + ids(second) == history_ids(http, saga_id), "entries lost"
    assert [e.event for e in second if e.comment is None][-1] == "end"
    # Once the saga has settled, resuming after its last entry gives the end alone.
    again = read(http, saga_id, last_event_id=ids(second)[-1])
    assert [(e.event, data(e)) for e in again if e.comment is None] == [
        ("end", {"id": saga_id, "status": "completed"})
    ]


def test_an_idle_stream_carries_keep_alive_comments(http: httpx.Client) -> None:
    saga_id = start(http, SLOW_MISSION)

    events = read(http, saga_id)

    def at(predicate: Callable[[dict[str, Any]], bool]) -> int:
        [index] = [
            i
            for i, e in enumerate(events)
            if e.comment is None and e.event == "transition" and predicate(data(e))
        ]
        return index

    def schedules_planning(entry: dict[str, Any]) -> bool:
        sent = (entry["detail"] or {}).get("scheduled", ())
        return any(s["step"] == "plan_routes" for s in sent)

    def planned(entry: dict[str, Any]) -> bool:
        return (entry["event"], entry["step"]) == ("step_completed", "plan_routes")

    idle = events[at(schedules_planning) : at(planned)]
    comments = [e for e in idle if e.comment is not None]
    # plan_routes sleeps 1.5 s: at one comment every 0.2 s, several arrive meanwhile.
    assert len(comments) >= 3, [(e.event, e.comment) for e in idle]
    assert all((e.comment or "").startswith("ping") for e in comments)
    gaps = [b.at - a.at for a, b in itertools.pairwise(comments)]
    assert max(gaps) < 1.0, gaps
    assert [e.event for e in events if e.comment is None][-1] == "end"


def test_an_unknown_saga_is_404_before_any_stream(http: httpx.Client) -> None:
    response = http.get("/api/sagas/no-such-saga/events", timeout=5)

    assert response.status_code == 404
    assert response.headers["content-type"].startswith("application/json")
    assert "no-such-saga" in response.json()["detail"]


def test_a_last_event_id_that_is_no_entry_id_is_422(http: httpx.Client) -> None:
    saga_id = start(http, MISSION)

    response = http.get(f"/api/sagas/{saga_id}/events", headers={"Last-Event-ID": "soon"})

    assert response.status_code == 422
    assert response.json()["field"] == "header.Last-Event-ID"
