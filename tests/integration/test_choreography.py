"""Choreographed SLAM missions on real Redis, PostgreSQL and participant processes.

One tracker and one process per service (two for robots, one of which is killed) run for
the whole module, with short claim and timeout settings; each test starts its missions and
reads the outcome from the saga log and the services' own tables.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from sagakit import Settings
from sagakit.choreography import SagaEvent
from tests.support.choreography import SAGAKIT, TIMEOUT, Rig, rig_env, until

pytestmark = [
    pytest.mark.integration,
    pytest.mark.chaos,
    pytest.mark.postgres,
    pytest.mark.redis,
    pytest.mark.timeout(180),
]


@pytest.fixture(scope="module")
def rig(
    pg_databases: Callable[[], str], redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Rig]:
    logs = tmp_path_factory.mktemp("choreography")
    stream = f"test:choreography:{uuid.uuid4().hex[:8]}"
    rig = Rig(rig_env(pg_databases(), redis_url, stream, logs / "maps"), logs)
    rig.run_all()
    try:
        yield rig
    finally:
        rig.close()


def test_missions_complete_or_compensate_backwards(rig: Rig) -> None:
    ok = rig.start()
    failing = {
        step: rig.start(fail_at=step)
        for step in ("allocate_robots", "plan_routes", "explore", "integrate_maps")
    }
    assert rig.settled(ok) == "completed"
    assert rig.rows("SELECT saga_id FROM slam_maps WHERE saga_id = :s", s=ok)
    done_order = {
        "allocate_robots": [],
        "plan_routes": ["allocate_robots"],
        "explore": ["allocate_robots", "plan_routes", "explore[0]"],
        "integrate_maps": ["allocate_robots", "plan_routes", "explore[0]", "explore[1]"],
    }
    for step, saga_id in failing.items():
        assert rig.settled(saga_id) == "compensated", step
        history = rig.history(saga_id)
        succeeded = [s for e, s in history if e == "step_completed"]
        undone = [s for e, s in history if e == "step_compensated"]
        assert sorted(succeeded) == sorted(done_order[step])
        assert undone == list(reversed(succeeded)), step  # exactly what was done, backwards
        # Each service undid only its own work, and all of it.
        assert rig.held(saga_id) == 0
        assert not rig.rows("SELECT 1 FROM slam_plans WHERE saga_id = :s", s=saga_id)
        assert not rig.rows("SELECT 1 FROM slam_maps WHERE saga_id = :s", s=saga_id)
        scans = rig.rows("SELECT status FROM slam_scans WHERE saga_id = :s", s=saga_id)
        assert all(status == "aborted" for (status,) in scans)
    assert rig.rows("SELECT count(*) FROM slam_scans WHERE saga_id = :s", s=failing["explore"]) == [
        (1,)
    ]

    # The saga log shows it like an orchestrated saga, marked as choreographed.
    shown = subprocess.run(
        [SAGAKIT, "show", failing["explore"], "--json"],
        env={**os.environ, **rig.env},
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    view = json.loads(shown.stdout)
    assert view["choreographed"] is True
    assert view["type"] == "slam_choreographed"
    assert [s["name"] for s in view["steps"]][:3] == [
        "allocate_robots",
        "plan_routes",
        "explore[0]",
    ]
    with _api(rig) as client:
        body = client.get(f"/api/sagas/{ok}").json()
        assert body["choreographed"] is True and body["status"] == "completed"
        assert [h["event"] for h in body["history"]][-1] == "saga_completed"
        listed = client.get("/api/sagas", params={"type": "slam_choreographed"}).json()
        assert ok in [item["id"] for item in listed["items"]]
        page = client.get(f"/sagas/{ok}")
        assert page.status_code == 200 and "choreographed" in page.text
        assert "choreographed" in client.get("/", params={"type": "slam_choreographed"}).text
        metrics = client.get("/metrics").text
        assert 'sagakit_sagas_started_total{saga_type="slam_choreographed"}' in metrics


@contextmanager
def _api(rig: Rig) -> Iterator[Any]:
    from sagakit.api import create_app
    from tests.support.api_app import TestClient

    settings = Settings(
        database_url=rig.env["SAGAKIT_DATABASE_URL"],
        redis_url=rig.env["SAGAKIT_REDIS_URL"],
        choreography_stream=rig.env["SAGAKIT_CHOREOGRAPHY_STREAM"],
        imports=["sagakit_examples.slam"],
    )
    with TestClient(create_app(settings)) as client:
        yield client


def test_killed_participant_is_reclaimed_and_acts_once(rig: Rig) -> None:
    saga_id = rig.start(faults={"slow": {"allocate_robots": 4}})
    client = rig.bus.client

    def held_by_a() -> bool:
        pending = client.xpending_range(rig.bus.stream, "robots", "-", "+", 10)
        return any(p["consumer"] in (b"robots-a", "robots-a") for p in pending)

    until(held_by_a, "robots-a to take the mission")
    rig.spawn("robots-b", "participant", "robots", "--consumer", "robots-b")
    rig.procs["robots-a"].send_signal(signal.SIGKILL)
    rig.procs["robots-a"].wait(timeout=10)
    assert rig.settled(saga_id) == "completed"
    handled = rig.rows(
        "SELECT consumer FROM sagakit_inbox"
        " WHERE saga_id = :s AND event_type = 'mission_requested'",
        s=saga_id,
    )
    assert handled == [("robots-b",)]
    allocations = rig.rows("SELECT robot_id FROM slam_allocations WHERE saga_id = :s", s=saga_id)
    assert len(allocations) == 2  # once, though two processes ran the handler


def test_an_event_published_twice_is_handled_once(rig: Rig) -> None:
    saga_id = rig.start()
    assert rig.settled(saga_id) == "completed"
    (event_id,) = [
        r[0]
        for r in rig.rows(
            "SELECT event_id FROM sagakit_inbox"
            " WHERE saga_id = :s AND event_type = 'robots_allocated'",
            s=saga_id,
        )
    ]
    raw = rig.rows("SELECT fields FROM sagakit_outbox WHERE event_id = :e", e=event_id)[0][0]
    again = SagaEvent.from_fields(raw)
    rig.bus.publish([again, again])
    until(
        lambda: (
            not rig.bus.client.xpending(rig.bus.stream, "planning")["pending"]
            and _delivered(rig, "planning", 3)
        ),
        "planning to read both copies",
    )
    assert rig.rows("SELECT count(*) FROM slam_plans WHERE saga_id = :s", s=saga_id) == [(1,)]
    assert rig.rows(
        "SELECT count(*) FROM sagakit_inbox WHERE event_id = :e AND service = 'planning'",
        e=event_id,
    ) == [(1,)]
    assert rig.settled(saga_id) == "completed"


def _delivered(rig: Rig, group: str, at_least: int) -> bool:
    groups = {g["name"].decode(): g for g in rig.bus.client.xinfo_groups(rig.bus.stream)}
    last = groups[group]["last-delivered-id"].decode()
    entries = rig.bus.client.xrevrange(rig.bus.stream, count=1)
    return bool(entries) and entries[0][0].decode() == last


def test_poison_event_is_dead_lettered_then_replayed(rig: Rig) -> None:
    poisoned = rig.start(faults={"transient": {"plan_routes": 3}})
    healthy = rig.start()
    letters = until(
        lambda: [d for d in rig.bus.dead_letters() if d.event.get("saga_id") == poisoned],
        "the poison event in the dead letters",
    )
    assert letters[0].group == "planning" and "flaked" in letters[0].error
    assert letters[0].deliveries == 3
    assert rig.settled(healthy) == "completed"  # the others keep flowing
    assert rig.queries.get(poisoned).status == "running"
    with _api(rig) as client:
        listed = client.get("/api/dead-letters").json()
        assert letters[0].id in [d["id"] for d in listed]
        missing = client.post("/api/dead-letters/1-1/replay")
        assert missing.status_code == 404 and "no dead letter" in missing.json()["detail"]
    replayed = subprocess.run(
        [SAGAKIT, "dead-letters", "--replay", letters[0].id],
        env={**os.environ, **rig.env},
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert "replayed" in replayed.stdout
    assert rig.settled(poisoned) == "completed"
    assert not [d for d in rig.bus.dead_letters() if d.event.get("saga_id") == poisoned]


def test_dropped_event_times_out_and_compensates(rig: Rig) -> None:
    stopped = [rig.procs["tracker"], rig.procs["planning"]]
    for proc in stopped:
        proc.send_signal(signal.SIGSTOP)
    try:
        saga_id = rig.start()

        def published() -> list[bytes]:
            entries = rig.bus.client.xrange(rig.bus.stream, "-", "+")
            return [
                i
                for i, f in entries
                if f[b"type"] == b"robots_allocated" and f[b"saga_id"] == saga_id.encode()
            ]

        (entry,) = until(published, "robots_allocated")
        assert rig.bus.client.xdel(rig.bus.stream, entry) == 1
    finally:
        for proc in stopped:
            proc.send_signal(signal.SIGCONT)
    assert rig.settled(saga_id, timeout=TIMEOUT + 40) == "compensated"
    history = rig.history(saga_id)
    assert ("step_timed_out", "allocate_robots") in history
    assert ("step_compensated", "allocate_robots") in history
    assert rig.held(saga_id) == 0
