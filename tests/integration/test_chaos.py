"""Crashes that must not lose a saga: a worker SIGKILLed mid-step, a Redis restart.

Each test reports how long recovery took (see the test output with -s, or the junit log).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sagakit import Engine
from tests.integration.conftest import client_system, worker_env
from tests.support.cluster import Cluster, wait_for
from tests.support.history import steps_with
from tests.support.redis_server import RedisServer

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
def engine(cluster: Cluster) -> Iterator[Engine]:
    system = client_system(cluster.env)
    yield system.engine
    system.close()


def test_worker_killed_mid_step_does_not_lose_the_saga(
    engine: Engine, cluster: Cluster, capsys: pytest.CaptureFixture[str]
) -> None:
    victim = cluster.start("-c", "1")
    saga_id = engine.start("linear", {"faults": {"b": ["slow_first:30"]}}).saga_id
    wait_for(lambda: "b" in steps_with(engine, saga_id, "step_started"), 30, "b to start")
    cluster.kill(victim)
    killed_at = time.monotonic()
    cluster.start("-c", "1")

    record = engine.wait(saga_id, timeout=60)
    recovery = time.monotonic() - killed_at
    assert record.status == "completed", cluster.logs()
    b = [a for a in engine.attempts(saga_id) if a.step == "b"]
    assert [(a.attempt, a.status) for a in b] == [(1, "timed_out"), (2, "succeeded")]
    assert steps_with(engine, saga_id, "step_timed_out") == ["b"]
    # Recovered through the dead worker's missing heartbeat, before the step's own timeout.
    assert b[0].error == f"AttemptLost: worker {b[0].worker} stopped"
    with capsys.disabled():
        print(
            f"\nrecovery after SIGKILL mid-step: {recovery:.1f}s (worker lost after 4s of "
            f"silence, sweep 0.3s; the step timeout of {b[0].timeout}s was not needed)"
        )


def test_redis_restart_dropping_queued_messages_does_not_lose_sagas(
    engine: Engine,
    cluster: Cluster,
    redis_server: RedisServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    cluster.start("-c", "1")
    # The first saga occupies the only worker process; the rest wait in the queue.
    ids = [engine.start("linear", {"faults": {"a": ["slow_first:2"]}}).saga_id]
    wait_for(lambda: "a" in steps_with(engine, ids[0], "step_started"), 30, "a to start")
    ids += [engine.start("linear", {}).saga_id for _ in range(5)]
    wait_for(lambda: redis_server.queued("work") >= 5, 10, "messages to queue up")

    redis_server.restart()
    restarted_at = time.monotonic()
    assert redis_server.queued("work") == 0

    for saga_id in ids:
        assert engine.wait(saga_id, timeout=90).status == "completed", cluster.logs()
    recovery = time.monotonic() - restarted_at
    resent = sum(
        1 for saga_id in ids[1:] if any(h.event == "step_started" for h in engine.history(saga_id))
    )
    assert resent == 5
    with capsys.disabled():
        print(
            f"\nrecovery after a Redis restart that dropped 5 queued messages: "
            f"{recovery:.1f}s (redrive_after 4s, sweep 0.3s)"
        )
