"""Dependencies really stopped: private PostgreSQL and Redis servers, never the shared ones.

Every command says in one line which dependency is unreachable and exits 3; the API answers
503 while the database or the broker is down and 200 again once it is back, without a
restart (it also starts while the broker is down: only its database must answer at start);
a worker says once that its database or broker is gone and once that it answers again.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.cluster import ROOT, SAGAKIT, wait_for
from tests.support.postgres_server import PostgresServer
from tests.support.redis_server import RedisServer, free_port

pytestmark = [pytest.mark.integration, pytest.mark.chaos]

UNREACHABLE = 3
BROKER_OUTAGE = 3.0


def env_for(pg: PostgresServer, broker: RedisServer, tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "SAGAKIT_DATABASE_URL": pg.url,
        "SAGAKIT_BROKER_URL": broker.url,
        "SAGAKIT_REDIS_URL": broker.url,
        "SAGAKIT_IMPORTS": "tests.support.workload",
        "SAGAKIT_SWEEP_INTERVAL": "0.2",
        "SAGAKIT_API_PORT": str(free_port()),
        "SAGAKIT_FLOWER_PORT": str(free_port()),
        "SAGAKIT_DATA_DIR": str(tmp_path / "data"),
        "SLAM_DATABASE_URL": pg.url,
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
    }


def sagakit(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SAGAKIT, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )


def assert_one_line(result: subprocess.CompletedProcess[str], expected: str) -> None:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == UNREACHABLE, result.stderr[-2000:]
    assert lines == [f"error: {expected}"], result.stderr[-2000:]


DB_COMMANDS = [
    ["list"],
    ["show", "0123456789abcdef"],
    ["migrate"],
    ["run", "linear"],
    ["cancel", "0123456789abcdef"],
    ["robots"],
    ["api"],
    ["up"],
]


def test_every_command_names_the_stopped_database_in_one_line(
    pg: PostgresServer, broker: RedisServer, tmp_path: Path
) -> None:
    env = env_for(pg, broker, tmp_path)
    expected = (
        f"the saga log's database at {pg.address} is unreachable (connection refused): "
        "check SAGAKIT_DATABASE_URL and that PostgreSQL is running"
    )
    pg.stop()
    for args in DB_COMMANDS:
        extra = {"SAGAKIT_IMPORTS": "sagakit_examples.slam"} if args == ["robots"] else {}
        assert_one_line(sagakit({**env, **extra}, *args), expected)


def test_commands_that_send_messages_name_the_stopped_broker_in_one_line(
    pg: PostgresServer, broker: RedisServer, tmp_path: Path
) -> None:
    env = env_for(pg, broker, tmp_path)
    broker.stop()
    expected = (
        f"the broker at 127.0.0.1:{broker.port} is unreachable (connection refused): "
        "check SAGAKIT_BROKER_URL and that Redis is running"
    )
    for args in (["run", "linear"], ["retry", "0123456789abcdef"], ["up"]):
        assert_one_line(sagakit(env, *args), expected)
    # Nothing was started that could not be sent.
    listed = sagakit(env, "list", "--json")
    assert (listed.returncode, listed.stdout.strip()) == (0, "[]"), listed.stderr


def _get(url: str) -> httpx.Response | None:
    try:
        return httpx.get(url, timeout=5)
    except httpx.HTTPError:
        return None


def _status(url: str) -> int | None:
    response = _get(url)
    return None if response is None else response.status_code


def test_the_api_answers_503_while_the_database_is_stopped_and_recovers(
    pg: PostgresServer, broker: RedisServer, tmp_path: Path
) -> None:
    env = env_for(pg, broker, tmp_path)
    port = free_port()
    log = tmp_path / "api.log"
    with log.open("wb") as out:
        api = subprocess.Popen(
            [SAGAKIT, "api", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _status(f"{base}/api/sagas") == 200, 60, "the API")
        pg.stop()
        for path in ("/api/sagas", "/api/sagas/0123456789abcdef", "/metrics"):
            response = _get(base + path)
            assert response is not None
            assert response.status_code == 503, (path, response.text)
            assert response.headers["retry-after"] == "5"
            body = response.json()
            assert set(body) == {"detail", "field"}
            assert body["field"] is None
            assert body["detail"].startswith(f"the saga log's database at {pg.address} is ")
            assert "check SAGAKIT_DATABASE_URL" in body["detail"]
        health = _get(f"{base}/healthz")
        assert health is not None
        assert health.status_code == 503
        assert health.json()["database"] == "unreachable: connection refused"
        assert health.json()["detail"].startswith(f"the saga log's database at {pg.address} is ")
        pg.start()
        wait_for(lambda: _status(f"{base}/api/sagas") == 200, 30, "the API to recover")
        assert _status(f"{base}/healthz") == 200
        assert api.poll() is None  # the same process throughout
    finally:
        api.send_signal(signal.SIGINT)
        api.wait(30)
    assert "Traceback" not in log.read_text()


LINEAR = {"type": "linear", "input": {}}
SENDING = [  # the routes that send messages, with their bodies
    ("/api/sagas", LINEAR),
    ("/api/sagas/0123456789abcdef/cancel", None),
    ("/api/sagas/0123456789abcdef/retry", None),
]


def test_the_api_answers_503_while_the_broker_is_stopped_and_recovers(
    pg: PostgresServer, broker: RedisServer, tmp_path: Path
) -> None:
    env = env_for(pg, broker, tmp_path)  # the broker and the event stream on one Redis
    port = free_port()
    log = tmp_path / "api.log"
    broker.stop()
    with log.open("wb") as out:
        api = subprocess.Popen(
            [SAGAKIT, "api", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    expected = (
        f"the broker at 127.0.0.1:{broker.port} is unreachable (connection refused): "
        "check SAGAKIT_BROKER_URL and that Redis is running"
    )
    try:
        wait_for(lambda: _status(f"{base}/healthz") == 503, 60, "the API, degraded")
        broker.start()
        wait_for(lambda: _status(f"{base}/healthz") == 200, 30, "the API to see the broker")
        broker.stop()
        for path, payload in SENDING:
            sent = httpx.post(base + path, json=payload, timeout=10)
            assert sent.status_code == 503, (path, sent.text)
            assert sent.headers["retry-after"] == "5"
            assert sent.json() == {"detail": expected, "field": None}

        health = _get(f"{base}/healthz")
        assert health is not None
        assert health.status_code == 503, health.text
        assert health.headers["retry-after"] == "5"
        body = health.json()
        assert (body["detail"], body["field"]) == (expected, None)
        assert (body["status"], body["database"]) == ("degraded", "ok")
        assert body["broker"] == "unreachable: connection refused"
        # Nothing was started that could not be sent; reads still answer from the log.
        listed = _get(f"{base}/api/sagas")
        assert listed is not None
        assert (listed.status_code, listed.json()["items"]) == (200, [])

        broker.start()
        wait_for(lambda: _status(f"{base}/healthz") == 200, 30, "the API to recover")
        started = httpx.post(f"{base}/api/sagas", json=LINEAR, timeout=10)
        assert started.status_code == 202, started.text
        wait_for(lambda: broker.queued("work") == 1, 30, "the first step's message")
        assert api.poll() is None  # the same process throughout
    finally:
        api.send_signal(signal.SIGINT)
        api.wait(30)
    assert "Traceback" not in log.read_text()


class Worker:
    """A `sagakit worker` process and its log."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.log = log
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                [SAGAKIT, "worker", "-c", "1", "-n", "outage@%h"],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def lines(self, pattern: str) -> list[str]:
        return [line for line in self.text().splitlines() if re.search(pattern, line)]

    def wait_for(self, pattern: str, count: int = 1, timeout: float = 60) -> list[str]:
        def seen() -> list[str]:
            assert self.proc.poll() is None, self.text()[-3000:]
            found = self.lines(pattern)
            return found if len(found) >= count else []

        return list(wait_for(seen, timeout, f"{count} line(s) matching {pattern!r}"))

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


@pytest.fixture
def worker_log(tmp_path: Path) -> Iterator[list[Worker]]:
    started: list[Worker] = []
    yield started
    for worker in started:
        worker.stop()


def _repeats(line: str) -> int:
    match = re.search(r"\((\d+) repeated errors not logged\)", line)
    return int(match.group(1)) if match else 0


def test_a_worker_waits_for_its_database_and_says_so_once_per_outage(
    pg: PostgresServer, broker: RedisServer, tmp_path: Path, worker_log: list[Worker]
) -> None:
    db = re.escape(f"the saga log's database at {pg.address}")
    pg.stop()
    worker = Worker(env_for(pg, broker, tmp_path), tmp_path / "worker.log")
    worker_log.append(worker)
    worker.wait_for(f"{db} is unreachable .*retrying until it answers")
    pg.start()
    worker.wait_for(f"{db} answers again")
    worker.wait_for(r" ready\.")

    pg.stop()  # while it runs: the sweeper notices within its interval (0.2 s)
    worker.wait_for(f"{db} is unreachable", count=2)
    pg.start()
    worker.wait_for(rf"{db} answers again after \d+\.\ds", count=2)
    assert len(worker.lines(f"{db} is unreachable")) == 2  # one per outage
    assert "Traceback" not in worker.text()
    assert "sqlalche.me" not in worker.text()  # no driver message with its SQL


def test_a_worker_says_once_that_its_broker_is_gone_and_once_that_it_is_back(
    pg: PostgresServer, broker: RedisServer, tmp_path: Path, worker_log: list[Worker]
) -> None:
    where = re.escape(f"the broker at 127.0.0.1:{broker.port}")
    broker.stop()
    worker = Worker(env_for(pg, broker, tmp_path), tmp_path / "worker.log")
    worker_log.append(worker)
    worker.wait_for(f"{where} is unreachable .*retrying until it answers")
    broker.start()
    worker.wait_for(f"{where} answers again")
    worker.wait_for(r" ready\.")

    broker.stop()
    worker.wait_for(f"{where} is unreachable", count=2)
    time.sleep(BROKER_OUTAGE)  # the outage's length: Celery retries at +0 s and +2 s within it
    broker.start()
    again = worker.wait_for(f"{where} answers again", count=2)
    assert _repeats(again[-1]) >= 2  # Celery's failed reconnections, each unlogged
    assert len(worker.lines(f"{where} is unreachable")) == 2  # one per outage
    text = worker.text()
    assert "Cannot connect to" not in text  # Celery's per-retry error
    assert "Trying again" not in text
    assert "CPendingDeprecationWarning" not in text
    assert "Traceback" not in text


def test_a_worker_refused_by_its_database_says_so_and_exits(
    pg: PostgresServer, broker: RedisServer, tmp_path: Path
) -> None:
    env = env_for(pg, broker, tmp_path)
    env["SAGAKIT_DATABASE_URL"] = pg.url.replace("//postgres@", "//nobody@")
    done = sagakit(env, "worker")  # waiting would not mend a login the server refuses
    assert_one_line(
        done,
        f'the saga log\'s database at {pg.address} refused the connection (role "nobody" does '
        "not exist): check the user and password in SAGAKIT_DATABASE_URL",
    )
