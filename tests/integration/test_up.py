"""`sagakit up` end to end: the whole topology as processes, driven over HTTP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import redis

from tests.support.cluster import ROOT, SAGAKIT, wait_for
from tests.support.redis_server import free_port

pytestmark = [pytest.mark.integration, pytest.mark.postgres, pytest.mark.redis]
MISSIONS = 20


def _processes_with(marker: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if marker.encode() in (entry / "environ").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def _ok(url: str, **kwargs: object) -> bool:
    try:
        return httpx.get(url, timeout=2, **kwargs).status_code == 200  # type: ignore[arg-type]
    except httpx.HTTPError:
        return False


@pytest.fixture
def stack(
    pg_databases: Callable[[], str], redis_url: str, tmp_path: Path
) -> Iterator[dict[str, str]]:
    pg_url = pg_databases()  # a database of its own: a fresh fleet, exact counts
    broker = redis_url.rsplit("/", 1)[0] + "/12"
    redis.Redis.from_url(broker).flushdb()
    marker = f"SAGAKIT_UP_TEST_{uuid.uuid4().hex}"
    env = {
        **os.environ,
        marker: "1",
        "SAGAKIT_DATABASE_URL": pg_url,
        "SAGAKIT_BROKER_URL": broker,
        "SAGAKIT_REDIS_URL": broker,
        "SAGAKIT_IMPORTS": "sagakit_examples.slam",
        "SAGAKIT_API_PORT": str(free_port()),
        "SAGAKIT_FLOWER_PORT": str(free_port()),
        "SAGAKIT_FLOWER_PASSWORD": "flower-pw",
        "SAGAKIT_API_TOKEN": "api-token",
        "SAGAKIT_SWEEP_INTERVAL": "0.3",
        "SLAM_DATABASE_URL": pg_url,
        "SLAM_FLEET_SIZE": str(2 * MISSIONS + 8),
        "SLAM_OUTPUT_DIR": str(tmp_path / "maps"),
    }
    log = (tmp_path / "up.log").open("wb")
    proc = subprocess.Popen(
        [SAGAKIT, "up", "-c", "1"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    api = f"http://127.0.0.1:{env['SAGAKIT_API_PORT']}"
    try:
        wait_for(lambda: _ok(f"{api}/healthz") or proc.poll() is not None, 120, "the API")
        assert proc.poll() is None, (tmp_path / "up.log").read_text()[-3000:]
        yield {
            "api": api,
            "flower": f"http://127.0.0.1:{env['SAGAKIT_FLOWER_PORT']}",
            "marker": marker,
            "log": str(tmp_path / "up.log"),
            "pid": str(proc.pid),
        }
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
        log.close()
        for pid in _processes_with(marker):  # never leave strays behind, even on failure
            os.kill(pid, signal.SIGKILL)


def test_up_serves_missions_over_http_and_stops_cleanly(stack: dict[str, str]) -> None:
    api = httpx.Client(
        base_url=stack["api"], timeout=10, headers={"Authorization": "Bearer api-token"}
    )
    expected: dict[str, str] = {}
    for i in range(MISSIONS):
        fail_at = {1: "explore", 3: "integrate_maps"}.get(i % 4)
        body = {
            "type": "slam",
            "input": {
                "robots": 2,
                "area": f"hall-{i}",
                "width": 40,
                "height": 30,
                **({"fail_at": fail_at} if fail_at else {}),
            },
        }
        response = api.post("/api/sagas", json=body)
        assert response.status_code == 202, response.text
        expected[response.json()["id"]] = "compensated" if fail_at else "completed"
    unauthorised = httpx.post(f"{stack['api']}/api/sagas", json={"type": "slam", "input": {}})
    assert unauthorised.status_code == 401

    followed = next(s for s, outcome in expected.items() if outcome == "compensated")
    events: list[dict[str, object]] = []
    with api.stream("GET", f"/api/sagas/{followed}/events", timeout=120) as stream:
        name = ""
        for line in stream.iter_lines():
            if line.startswith("event: "):
                name = line[len("event: ") :]
            elif line.startswith("data: ") and name == "transition":
                events.append(json.loads(line[len("data: ") :]))
            elif line.startswith("data: ") and name == "end":
                assert json.loads(line[len("data: ") :])["status"] == "compensated"
                break
    names = [e["event"] for e in events]
    assert names[0] == "saga_started"
    assert names[-1] == "saga_compensated"
    assert "step_compensated" in names

    def settled() -> bool:
        return all(
            api.get(f"/api/sagas/{s}").json()["status"] in ("completed", "compensated", "failed")
            for s in expected
        )

    wait_for(settled, 180, "every mission to settle", interval=0.5)
    for saga_id, outcome in expected.items():
        detail = api.get(f"/api/sagas/{saga_id}").json()
        assert detail["status"] == outcome, (saga_id, detail["reason"])
    detail = api.get(f"/api/sagas/{followed}").json()
    stored = [h["event"] for h in detail["history"]]
    assert [n for n in names if n in stored] == names  # SSE saw the stored history, in order

    metrics = api.get("/metrics").text
    completed = sum(1 for o in expected.values() if o == "completed")
    line = next(
        x
        for x in metrics.splitlines()
        if x.startswith('sagakit_sagas_finished_total{outcome="completed",saga_type="slam"}')
    )
    assert float(line.split()[-1]) == completed
    assert "sagakit_step_duration_seconds_bucket" in metrics

    flower = stack["flower"]
    wait_for(lambda: _ok(f"{flower}/healthcheck"), 30, "Flower")
    assert httpx.get(f"{flower}/api/tasks", timeout=5).status_code == 401
    tasks = httpx.get(
        f"{flower}/api/tasks", params={"search": followed}, auth=("admin", "flower-pw"), timeout=10
    ).json()
    assert tasks, "Flower should list the saga's tasks"
    assert all(task_id.startswith(f"{followed}.") for task_id in tasks)
    assert {t["name"] for t in tasks.values()} >= {"robots.allocate", "robots.release"}

    os.kill(int(stack["pid"]), signal.SIGINT)
    wait_for(lambda: not _processes_with(stack["marker"]), 60, "every process to stop")


def test_a_process_that_dies_stops_the_stack_loudly(stack: dict[str, str]) -> None:
    up = int(stack["pid"])
    workers = [
        pid
        for pid in _processes_with(stack["marker"])
        if b"-Q\x00robots" in Path(f"/proc/{pid}/cmdline").read_bytes()
    ]
    assert workers, "sagakit up should run a worker for the robots queue"
    os.kill(min(workers), signal.SIGKILL)  # the worker's main process
    wait_for(lambda: not Path(f"/proc/{up}").exists() or _zombie(up), 60, "sagakit up to stop")
    log = Path(stack["log"]).read_text()
    assert "worker-robots exited with -9; stopping the stack (nothing is restarted)" in log
    wait_for(lambda: not _processes_with(stack["marker"]), 60, "every process to stop")


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except OSError:
        return True
