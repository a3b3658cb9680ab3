"""The saga log's PostgreSQL stopped under running steps and a serving API.

A private PostgreSQL and Redis (never the shared ones): an outcome that cannot be recorded
is retried, then handed to the ``sagakit`` queue, and recorded once the log is back, without
waiting for the step's timeout; the API answers 503 with ``Retry-After``, never 500, and
recovers by itself. Each test prints how long recovery took (see it with -s).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from sagakit.store import SagaRecord
from tests.integration.conftest import client_system, worker_env
from tests.support.client import Client
from tests.support.cluster import ROOT, SAGAKIT, Cluster, wait_for
from tests.support.history import started, steps_with
from tests.support.postgres_server import PostgresServer
from tests.support.redis_server import RedisServer, free_port
from tests.support.workload import TIMEOUT

pytestmark = [pytest.mark.integration, pytest.mark.chaos]

SETTLED = ("completed", "compensated", "failed")


@pytest.fixture
def cluster(pg: PostgresServer, broker: RedisServer, tmp_path: Path) -> Iterator[Cluster]:
    workers = Cluster(worker_env(pg.url, broker.url), tmp_path)
    yield workers
    workers.stop()


@pytest.fixture
def client(cluster: Cluster) -> Iterator[Client]:
    system = client_system(cluster.env)
    yield Client(system)
    system.close()


def settled(client: Client, saga_id: str) -> SagaRecord | None:
    """The saga once it settled; None while it runs or the log does not answer."""
    try:
        record = client.get(saga_id)
    except Exception:  # the test's own reads meet the outage too
        return None
    return record if record.status in SETTLED else None


def log_says(path: Path, text: str) -> bool:
    return text in path.read_text(errors="replace")


def test_an_outcome_met_by_a_brief_outage_is_recorded_by_its_worker_when_the_log_is_back(
    client: Client,
    cluster: Cluster,
    pg: PostgresServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    cluster.env["SAGAKIT_RECORD_PATIENCE"] = "60"
    cluster.start("-c", "1", name="service")
    worker_log = cluster.logdir / "service.log"
    done = tmp_path / "b.done"
    saga_id = client.start("linear", {"faults": {"b": ["slow_first:1", f"done:{done}"]}}).saga_id
    wait_for(lambda: started(client, saga_id, "b"), 30, "b to start")
    pg.stop()
    wait_for(done.exists, 30, "b to finish while the log is down")
    pg.start()  # it takes longer than the worker's first try to record b's outcome
    back_at = time.monotonic()

    record = wait_for(lambda: settled(client, saga_id), TIMEOUT, "the saga to settle")
    recovery = time.monotonic() - back_at
    assert record.status == "completed", cluster.logs()
    b = [a for a in client.attempts(saga_id) if a.step == "b" and a.direction == "action"]
    assert [(a.attempt, a.status) for a in b] == [(1, "succeeded")]
    assert steps_with(client, saga_id, "step_timed_out") == []
    assert log_says(worker_log, "the outcome is not recorded yet")  # it met the outage
    assert not log_says(worker_log, "outcome handed to")
    with capsys.disabled():
        print(
            f"\noutcome recorded {recovery:.1f}s after PostgreSQL was back (retried by its "
            f"worker; step timeout {TIMEOUT:.0f}s)"
        )


def test_an_outcome_past_the_patience_goes_to_the_sagakit_queue_and_is_recorded_later(
    client: Client, cluster: Cluster, pg: PostgresServer, capsys: pytest.CaptureFixture[str]
) -> None:
    cluster.env["SAGAKIT_RECORD_PATIENCE"] = "1"
    cluster.start("-c", "1", "-Q", "work", name="service")
    cluster.start("-c", "1", "-Q", "sagakit", name="recorder")
    service_log = cluster.logdir / "service.log"
    saga_id = client.start("linear", {"faults": {"b": ["slow_first:1"]}}).saga_id
    wait_for(lambda: started(client, saga_id, "b"), 30, "b to start")
    pg.stop()
    wait_for(
        lambda: log_says(service_log, "outcome handed to the sagakit queue"),
        30,
        "the service worker to hand b's outcome over",
    )
    pg.start()
    back_at = time.monotonic()

    record = wait_for(lambda: settled(client, saga_id), TIMEOUT, "the saga to settle")
    recovery = time.monotonic() - back_at
    assert record.status == "completed", cluster.logs()
    b = [a for a in client.attempts(saga_id) if a.step == "b" and a.direction == "action"]
    assert [(a.attempt, a.status) for a in b] == [(1, "succeeded")]
    assert (b[0].worker or "").startswith("service@")  # who ran it, as the report says
    assert steps_with(client, saga_id, "step_timed_out") == []
    assert log_says(cluster.logdir / "recorder.log", "sagakit.record_outcome")
    with capsys.disabled():
        print(
            f"\noutcome handed to the sagakit queue, recorded {recovery:.1f}s after "
            f"PostgreSQL was back (step timeout {TIMEOUT:.0f}s)"
        )


def _answer(method: str, url: str, **options: Any) -> httpx.Response | None:
    try:
        return httpx.request(method, url, timeout=10, **options)
    except httpx.HTTPError:
        return None


def test_the_api_answers_503_with_retry_after_through_an_outage_and_a_crash_restart(
    pg: PostgresServer, broker: RedisServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    port = free_port()
    env = {
        **os.environ,
        **worker_env(pg.url, broker.url),
        "SAGAKIT_DATA_DIR": str(tmp_path / "data"),
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
    }
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
    start = {"json": {"type": "linear", "input": {}}}
    calls: list[tuple[str, str, dict[str, Any]]] = [
        ("POST", "/api/sagas", start),
        ("GET", "/api/sagas", {}),
        ("GET", "/api/sagas/0123456789abcdef", {}),
    ]
    answered: dict[int, int] = {}

    def ask(method: str, path: str, options: dict[str, Any]) -> httpx.Response:
        response = _answer(method, base + path, **options)
        assert response is not None, (method, path)
        answered[response.status_code] = answered.get(response.status_code, 0) + 1
        assert response.status_code != 500, (method, path, response.text)
        if response.status_code == 503:
            assert response.headers["retry-after"] == "5"
            body = response.json()
            assert set(body) == {"detail", "field"}
            assert body["detail"].startswith(f"the saga log's database at {pg.address} ")
        return response

    def all_answer() -> bool:
        codes = [ask(*call).status_code for call in calls]
        return codes == [202, 200, 404]

    try:
        wait_for(
            lambda: (r := _answer("GET", base + "/api/sagas")) and r.status_code == 200,
            60,
            "the API",
        )
        for _ in range(3):  # connections in the pool, for the restart to leave stale
            assert all_answer()

        pg.stop()
        for call in calls:
            assert ask(*call).status_code == 503
        pg.start()
        back_at = time.monotonic()
        wait_for(all_answer, 30, "the API to answer again")
        after_outage = time.monotonic() - back_at

        pg.stop("immediate")  # a crash: every session cut at once, the pool left stale
        pg.start()
        back_at = time.monotonic()
        wait_for(all_answer, 30, "the API to answer after the crash restart")
        after_crash = time.monotonic() - back_at
        assert api.poll() is None  # the same process throughout
    finally:
        api.send_signal(signal.SIGINT)
        api.wait(30)
    assert "Traceback" not in log.read_text()
    with capsys.disabled():
        print(
            f"\nAPI answered 2xx again {after_outage:.2f}s after an outage and "
            f"{after_crash:.2f}s after a crash restart; answers: {sorted(answered.items())}"
        )
