"""`sagakit up` end to end: the whole topology as processes, driven over HTTP."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

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


def _flower_pid(marker: str) -> int:
    flowers = [
        pid
        for pid in _processes_with(marker)
        if b"\x00flower\x00" in Path(f"/proc/{pid}/cmdline").read_bytes()
    ]
    assert len(flowers) == 1, flowers
    return flowers[0]


def _flower_sees_workers(flower: str) -> bool:
    try:
        metrics = httpx.get(f"{flower}/metrics", timeout=2).text
    except httpx.HTTPError:
        return False
    return any(
        line.startswith("flower_worker_online{") and line.endswith(" 1.0")
        for line in metrics.splitlines()
    )


def _ok(url: str, **kwargs: object) -> bool:
    try:
        return httpx.get(url, timeout=2, **kwargs).status_code == 200  # type: ignore[arg-type]
    except httpx.HTTPError:
        return False


@pytest.fixture
def stack(
    pg_databases: Callable[[], str], redis_url: str, tmp_path: Path
) -> Iterator[dict[str, Any]]:
    pg_url = pg_databases()  # a database of its own: a fresh fleet, exact counts
    broker = redis_url  # this session's Redis database, emptied for a stack of its own
    redis.Redis.from_url(broker).flushdb()
    marker = f"SAGAKIT_UP_TEST_{uuid.uuid4().hex}"
    env = {
        **{key: value for key, value in os.environ.items() if key != "SAGAKIT_FLOWER_PASSWORD"},
        marker: "1",
        "SAGAKIT_DATABASE_URL": pg_url,
        "SAGAKIT_BROKER_URL": broker,
        "SAGAKIT_REDIS_URL": broker,
        "SAGAKIT_IMPORTS": "sagakit_examples.slam",
        "SAGAKIT_API_PORT": str(free_port()),
        "SAGAKIT_FLOWER_PORT": str(free_port()),
        "SAGAKIT_DATA_DIR": str(tmp_path / "data"),  # Flower's password is generated there
        "SAGAKIT_API_TOKEN": "api-token",
        # /healthz behind the token too: up must send it to see the API healthy.
        "SAGAKIT_API_PROTECT_SYSTEM": "true",
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
    up_log = tmp_path / "up.log"
    try:
        wait_for(
            lambda: b"sagakit is up:" in up_log.read_bytes() or proc.poll() is not None,
            120,
            "sagakit up to find the API and Flower healthy",
        )
        assert proc.poll() is None, up_log.read_text()[-3000:]
        assert httpx.get(f"{api}/healthz", timeout=5).status_code == 401  # protected
        assert _ok(f"{api}/healthz", headers={"Authorization": "Bearer api-token"})
        yield {
            "api": api,
            "flower": f"http://127.0.0.1:{env['SAGAKIT_FLOWER_PORT']}",
            "marker": marker,
            "log": str(tmp_path / "up.log"),
            "pid": str(proc.pid),
            "data": env["SAGAKIT_DATA_DIR"],
            "env": env,
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


def test_up_serves_missions_over_http_and_stops_cleanly(stack: dict[str, Any]) -> None:
    api = httpx.Client(
        base_url=stack["api"], timeout=10, headers={"Authorization": "Bearer api-token"}
    )
    # Flower names a task from its first event: start once it receives events (worker
    # heartbeats, on its unauthenticated metrics page).
    wait_for(lambda: _flower_sees_workers(stack["flower"]), 60, "Flower to receive events")
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
    password = _generated_flower_password(stack)
    assert httpx.get(f"{flower}/api/tasks", timeout=5).status_code == 401
    wrong = httpx.get(f"{flower}/api/tasks", auth=("admin", password + "x"), timeout=5)
    assert wrong.status_code == 401
    tasks = httpx.get(
        f"{flower}/api/tasks", params={"search": followed}, auth=("admin", password), timeout=10
    ).json()
    assert tasks, "Flower should list the saga's tasks"
    assert all(task_id.startswith(f"{followed}.") for task_id in tasks)
    assert {t["name"] for t in tasks.values()} >= {"robots.allocate", "robots.release"}
    _flower_knows_the_step_tasks(stack)
    flower_argv = Path(f"/proc/{_flower_pid(stack['marker'])}/cmdline").read_bytes().split(b"\0")

    os.kill(int(stack["pid"]), signal.SIGINT)
    wait_for(lambda: not _processes_with(stack["marker"]), 60, "every process to stop")
    _flower_remembers_after_a_restart(stack, flower_argv[:-1], password, followed)


def _generated_flower_password(stack: dict[str, Any]) -> str:
    """The generated password: in a file only its owner reads, and nowhere in sight."""
    data = Path(stack["data"])
    path = data / "flower-password"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    password = path.read_text().strip()
    assert len(password) >= 16
    log = Path(stack["log"]).read_text()
    assert f"(user 'admin', password in {path})" in log
    assert password not in log
    for pid in _processes_with(stack["marker"]):
        assert password.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes(), pid
    listing = subprocess.run(
        ["ps", "-e", "-ww", "-o", "pid=,args="], capture_output=True, text=True, check=True
    ).stdout
    flower = str(_flower_pid(stack["marker"]))
    assert any(line.split(None, 1)[0] == flower for line in listing.splitlines())
    assert password not in listing
    return password


def _flower_knows_the_step_tasks(stack: dict[str, Any]) -> None:
    """Flower runs with the app: its registered tasks are the SLAM steps, not only celery.*."""
    flower_lines = [
        line.partition("|")[2]
        for line in Path(stack["log"]).read_text().splitlines()
        if line.startswith("flower ")
    ]
    registered = "\n".join(flower_lines).partition("Registered tasks:")[2]
    assert "'robots.allocate'" in registered, "\n".join(flower_lines[-40:])
    assert "'mapping.integrate'" in registered


def _flower_remembers_after_a_restart(
    stack: dict[str, Any], argv: list[bytes], password: str, saga_id: str
) -> None:
    """The state file outlives a clean stop, and the same Flower command starts from it."""
    data = Path(stack["data"])
    assert list(data.glob("flower.db*")), sorted(p.name for p in data.iterdir())
    env = {**stack["env"], "FLOWER_BASIC_AUTH": f"admin:{password}"}
    restarted = subprocess.Popen(
        [arg.decode() for arg in argv],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_for(lambda: _ok(f"{stack['flower']}/healthcheck"), 60, "Flower to start again")
        tasks = httpx.get(
            f"{stack['flower']}/api/tasks",
            params={"search": saga_id},
            auth=("admin", password),
            timeout=10,
        ).json()
        assert {t["name"] for t in tasks.values()} >= {"robots.allocate", "robots.release"}
    finally:
        os.killpg(restarted.pid, signal.SIGTERM)
        restarted.wait(30)


def test_a_process_that_dies_stops_the_stack_loudly(stack: dict[str, Any]) -> None:
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


@pytest.mark.parametrize(
    ("setting", "what"), [("SAGAKIT_API_PORT", "the API"), ("SAGAKIT_FLOWER_PORT", "Flower")]
)
def test_up_refuses_a_port_in_use_before_starting_anything(
    setting: str, what: str, pg_url: str, redis_url: str, tmp_path: Path
) -> None:
    marker = f"SAGAKIT_UP_TEST_{uuid.uuid4().hex}"
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        env = {
            **os.environ,
            marker: "1",
            "SAGAKIT_DATABASE_URL": pg_url,
            "SAGAKIT_BROKER_URL": redis_url,
            "SAGAKIT_API_PORT": str(free_port()),
            "SAGAKIT_FLOWER_PORT": str(free_port()),
            "SAGAKIT_DATA_DIR": str(tmp_path / "data"),
            setting: str(port),  # held by another program's listening socket
        }
        done = subprocess.run(
            [SAGAKIT, "up"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
        )
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr == (
        f"error: port {port} on 127.0.0.1 is already in use, so {what} cannot listen there: "
        f"stop what holds it, or set {setting} to a free port\n"
    )
    assert not _processes_with(marker)  # nothing was started
    assert not (tmp_path / "data").exists()
