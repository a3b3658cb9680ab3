"""Crashes that must not lose a saga: a worker SIGKILLed mid-step, a Redis restart.

Each test reports how long recovery took (see the test output with -s, or the junit log).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import redis

from tests.integration.conftest import client_system, worker_env
from tests.support.client import Client
from tests.support.cluster import Cluster, wait_for
from tests.support.history import started, steps_with
from tests.support.redis_server import RedisServer
from tests.support.workload import TIMEOUT

pytestmark = [pytest.mark.integration, pytest.mark.chaos, pytest.mark.postgres, pytest.mark.redis]


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def cluster(pg_url: str, redis_server: RedisServer, tmp_path: Path) -> Iterator[Cluster]:
    workers = Cluster(worker_env(pg_url, redis_server.url), tmp_path)
    yield workers
    workers.stop()


@pytest.fixture
def client(cluster: Cluster) -> Iterator[Client]:
    system = client_system(cluster.env)
    yield Client(system)
    system.close()


def test_worker_killed_mid_step_does_not_lose_the_saga(
    client: Client, cluster: Cluster, capsys: pytest.CaptureFixture[str]
) -> None:
    victim = cluster.start("-c", "1")
    saga_id = client.start("linear", {"faults": {"b": ["slow_first:30"]}}).saga_id
    wait_for(lambda: started(client, saga_id, "b"), 30, "b to start")
    cluster.kill(victim)
    killed_at = time.monotonic()
    cluster.start("-c", "1")

    record = client.wait(saga_id, timeout=60)
    recovery = time.monotonic() - killed_at
    assert record.status == "completed", cluster.logs()
    b = [a for a in client.attempts(saga_id) if a.step == "b" and a.direction == "action"]
    assert [(a.attempt, a.status) for a in b] == [(1, "timed_out"), (2, "succeeded")]
    assert steps_with(client, saga_id, "step_timed_out") == ["b"]
    # Recovered through the dead worker's missing heartbeat, before the step's own timeout.
    assert b[0].error == f"worker {b[0].worker} stopped"
    with capsys.disabled():
        print(
            f"\nrecovery after SIGKILL mid-step: {recovery:.1f}s (worker lost after 4s of "
            "silence, sweep 0.3s; the step timeout of 8s was not needed)"
        )


def test_a_pool_process_killed_mid_step_is_redelivered_and_recovers_at_once(
    client: Client, cluster: Cluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The OOM killer or a segfault takes the prefork child running a step; the worker's
    main process lives on, so its heartbeat says nothing is lost. Celery redelivers the
    message (`reject_on_worker_lost`), the log says attempt 1 is still the current one, and
    the step runs again at once: the step's timeout is not waited for."""
    worker = cluster.start("-c", "2")
    pidfile = tmp_path / "b.pid"
    saga_id = client.start("linear", {"faults": {"b": [f"hang_once:{pidfile}"]}}).saga_id
    pid = int(wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(), 30, "b to run"))
    pool = [child.pid for child in psutil.Process(worker.pid).children()]
    assert pid in pool, (pid, pool)
    os.kill(pid, signal.SIGKILL)
    killed_at = time.monotonic()

    record = client.wait(saga_id, timeout=TIMEOUT)  # past it, recovery took the timeout
    recovery = time.monotonic() - killed_at
    assert record.status == "completed", cluster.logs()
    assert worker.poll() is None  # the same worker, with a new pool process
    b = [a for a in client.attempts(saga_id) if a.step == "b" and a.direction == "action"]
    assert [(a.attempt, a.status) for a in b] == [(1, "succeeded")]
    assert steps_with(client, saga_id, "step_timed_out") == []
    with capsys.disabled():
        print(
            f"\nrecovery after SIGKILL of the pool process mid-step: {recovery:.1f}s "
            f"(redelivered at once; the step timeout is {TIMEOUT:.0f}s)"
        )


def test_a_worker_killed_running_a_carried_step_has_it_timed_out_and_retried(
    client: Client, cluster: Cluster
) -> None:
    """An eager saga's b runs in the delivery of a: the dead worker's heartbeat held only
    a's task id, and the sweeper finds b through its row."""
    victim = cluster.start("-c", "1")
    saga_id = client.start("eager", {"faults": {"b": ["slow_first:30"]}}).saga_id
    wait_for(lambda: started(client, saga_id, "b"), 30, "b to start")
    [b] = [s for s in client.system.queries.steps(saga_id) if s.state.name == "b"]
    assert b.carrier is not None and b.carrier.endswith(".a.fwd.1")  # carried, not sent
    cluster.kill(victim)
    cluster.start("-c", "1")

    record = client.wait(saga_id, timeout=60)
    assert record.status == "completed", cluster.logs()
    tried = [a for a in client.attempts(saga_id) if a.step == "b" and a.direction == "action"]
    assert [(a.attempt, a.status) for a in tried] == [(1, "timed_out"), (2, "succeeded")]
    assert tried[0].error == f"worker {tried[0].worker} stopped"


def test_a_pool_process_killed_running_a_carried_step_runs_it_again_at_once(
    client: Client, cluster: Cluster, tmp_path: Path
) -> None:
    """Celery requeues the carrier (a's message); its redelivery finds a over and sends
    the attempt it carried, which runs again as attempt 1, before any timeout."""
    worker = cluster.start("-c", "2")
    pidfile = tmp_path / "b.pid"
    saga_id = client.start("eager", {"faults": {"b": [f"hang_once:{pidfile}"]}}).saga_id
    pid = int(wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(), 30, "b to run"))
    os.kill(pid, signal.SIGKILL)

    record = client.wait(saga_id, timeout=TIMEOUT)
    assert record.status == "completed", cluster.logs()
    assert worker.poll() is None
    tried = [a for a in client.attempts(saga_id) if a.step == "b" and a.direction == "action"]
    assert [(a.attempt, a.status) for a in tried] == [(1, "succeeded")]
    logs = "".join(log.read_text() for log in cluster.logdir.glob("*.log"))
    assert "sending them again" in logs, cluster.logs()


@pytest.mark.slow  # waits out a visibility timeout; the check it relies on is tested at once in
# test_workers.py::test_a_late_redelivery_of_a_finished_attempt_runs_nothing
def test_a_dead_workers_unacked_message_comes_back_after_the_visibility_timeout_and_is_dropped(
    client: Client,
    cluster: Cluster,
    redis_server: RedisServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A worker SIGKILLed holding a message leaves it unacked in Redis; the sweeper re-drives
    the saga from the heartbeat within seconds. After the visibility timeout, the next worker
    that scans for expired messages (at its start, and every ~100 s while it runs) puts the
    stale copy back on its queue: it is checked against the log and dropped, in one line."""
    visibility = 12.0  # above the step timeout with twice the grace, as sagakit requires
    cluster.env["SAGAKIT_VISIBILITY_TIMEOUT"] = str(visibility)
    victim = cluster.start("-c", "1", name="victim")
    saga_id = client.start("linear", {"faults": {"b": ["slow_first:30"]}}).saga_id
    wait_for(lambda: started(client, saga_id, "b"), 30, "b to start")
    cluster.kill(victim)
    killed_at = time.monotonic()
    cluster.start("-c", "1", name="survivor")
    assert client.wait(saga_id, timeout=60).status == "completed", cluster.logs()
    recovered = time.monotonic() - killed_at

    broker = redis.Redis.from_url(redis_server.url)
    assert broker.zcard("unacked_index") == 1  # b's first copy, which the victim held
    wait_for(
        lambda: broker.zcount("unacked_index", 0, time.time() - visibility),
        visibility + 10,
        "the held copy to pass the visibility timeout",
    )
    cluster.start("-c", "1", name="late")  # its start restores expired messages

    def lines() -> list[str]:
        logs = sorted(cluster.logdir.glob("*.log"))
        return [line for log in logs for line in log.read_text(errors="replace").splitlines()]

    def dropped() -> list[str]:
        return [
            line
            for line in lines()
            if saga_id in line and "delivery ignored: it is not current" in line
        ]

    wait_for(dropped, 30, "the stale copy to be delivered and dropped")
    dropped_at = time.monotonic() - killed_at
    performed = [line for line in lines() if saga_id in line and " b #1] performing" in line]
    assert len(performed) == 1, performed  # on the victim, never again
    assert broker.zcard("unacked_index") == 0
    with capsys.disabled():
        print(
            f"\nworker SIGKILLed holding a message: saga recovered in {recovered:.1f}s; the "
            f"stale copy came back {dropped_at:.1f}s after the kill (visibility timeout "
            f"{visibility:.0f}s) and was dropped: {dropped()[0].split('] ', 1)[-1]}"
        )


def test_redis_restart_dropping_queued_messages_does_not_lose_sagas(
    client: Client,
    cluster: Cluster,
    redis_server: RedisServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    cluster.start("-c", "1")
    # The first saga occupies the only worker process; the rest wait in the queue.
    ids = [client.start("linear", {"faults": {"a": ["slow_first:2"]}}).saga_id]
    wait_for(lambda: started(client, ids[0], "a"), 30, "a to start")
    ids += [client.start("linear", {}).saga_id for _ in range(5)]
    wait_for(lambda: redis_server.queued("work") >= 5, 10, "messages to queue up")

    redis_server.restart()
    restarted_at = time.monotonic()
    assert redis_server.queued("work") == 0

    for saga_id in ids:
        assert client.wait(saga_id, timeout=90).status == "completed", cluster.logs()
    recovery = time.monotonic() - restarted_at
    # Each lost message went out again, once: the first step of each waiting saga.
    sends = [client.steps(saga_id)[0].send_count for saga_id in ids[1:]]
    assert sends == [2] * 5, sends
    with capsys.disabled():
        print(
            f"\nrecovery after a Redis restart that dropped 5 queued messages: "
            f"{recovery:.1f}s (told by the broker's missing marker; sweep 0.3s)"
        )


def test_a_redis_restart_does_not_send_again_a_step_that_runs_in_its_carrier(
    client: Client, cluster: Cluster, redis_server: RedisServer
) -> None:
    """The broker's epoch moves: what it lost is sent again, but an eager saga's b, which
    runs in a's delivery and was never in the broker, is held through its carrier."""
    cluster.start("-c", "1")
    carried = client.start("eager", {"faults": {"b": ["slow_first:3"]}}).saga_id
    wait_for(lambda: started(client, carried, "b"), 30, "b to start")
    queued = [client.start("linear", {}).saga_id for _ in range(3)]
    wait_for(lambda: redis_server.queued("work") >= 3, 10, "messages to queue up")

    redis_server.restart()

    for saga_id in [carried, *queued]:
        assert client.wait(saga_id, timeout=90).status == "completed", cluster.logs()
    rows = {s.state.name: s for s in client.steps(carried)}
    assert rows["b"].send_count == 1, rows["b"]  # not sent again
    tried = [a for a in client.attempts(carried) if a.step == "b"]
    assert [(a.attempt, a.status) for a in tried] == [(1, "succeeded")]
    # What the broker did lose went out again, once each.
    assert [client.steps(s)[0].send_count for s in queued] == [2, 2, 2]
