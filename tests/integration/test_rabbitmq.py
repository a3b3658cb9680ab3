"""RabbitMQ as the broker, on real workers: sagas complete and compensate, a worker
SIGKILLed mid-step loses nothing, and a broker restart loses nothing either.

The shared RabbitMQ serves the tests that do not restart it, each module or test in a vhost
of its own; the restart test runs a private node (`tests.support.rabbitmq_server`). What
differs from Redis: RabbitMQ hands a dead consumer's unacknowledged message to the next one
at once (Redis waits out its visibility timeout), and its durable quorum queues keep their
messages across a restart (a Redis without persistence loses them and the sweeper re-sends).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import client_system, worker_env
from tests.support.client import Client
from tests.support.cluster import Cluster, wait_for
from tests.support.history import started
from tests.support.rabbitmq_server import RabbitServer

pytestmark = [pytest.mark.integration, pytest.mark.postgres, pytest.mark.rabbitmq]

RABBITMQ_URL = os.environ.get("SAGAKIT_TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672")
CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _rabbitmqctl(*args: str) -> str:
    binary = shutil.which("rabbitmqctl")
    if binary is None:
        raise RuntimeError("rabbitmqctl is not installed")
    done = subprocess.run([binary, *args], capture_output=True, text=True, timeout=60, check=True)
    return done.stdout


@pytest.fixture
def vhost() -> Iterator[str]:
    """A vhost of the shared RabbitMQ for one test (its queues go with it)."""
    yield from _vhost()


@pytest.fixture(scope="module")
def module_vhost() -> Iterator[str]:
    yield from _vhost()


def _vhost() -> Iterator[str]:
    name = f"sagakit-test-{uuid.uuid4().hex[:8]}"
    try:
        _rabbitmqctl("add_vhost", name)
        _rabbitmqctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        message = f"RabbitMQ is not reachable through rabbitmqctl: {exc}"
        if CI:
            pytest.fail(f"{message} (required in CI)")
        pytest.skip(message)
    try:
        yield f"{RABBITMQ_URL.rstrip('/')}/{name}"
    finally:
        _rabbitmqctl("delete_vhost", name)


def _cluster(pg_url: str, broker_url: str, logdir: Path) -> Cluster:
    """Workers on a saga log of their own: a sweeper of another test's workers, on another
    broker, would find this test's sagas' messages missing from its queues and send them."""
    env = worker_env(pg_url, broker_url)
    env.pop("SAGAKIT_REDIS_URL")  # no event stream: it needs Redis
    return Cluster(env, logdir)


@pytest.fixture(scope="module")
def cluster(
    pg_databases: Callable[[], str], module_vhost: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    workers = _cluster(pg_databases(), module_vhost, tmp_path_factory.mktemp("rabbit"))
    try:
        workers.start("-c", "2")
        yield workers
    finally:
        workers.stop()


@pytest.fixture(scope="module")
def client(cluster: Cluster) -> Iterator[Client]:
    system = client_system(cluster.env)
    yield Client(system)
    system.close()


def _statuses(client: Client, saga_id: str) -> list[tuple[str, str, int, str]]:
    return [(a.step, a.direction, a.attempt, a.status) for a in client.attempts(saga_id)]


def test_sagas_complete_and_compensate_on_quorum_queues(
    client: Client, cluster: Cluster, module_vhost: str
) -> None:
    done = client.start("linear", {"faults": {"b": ["transient:1"]}}).saga_id
    undone = client.start("linear", {"faults": {"c": ["fail"]}}).saga_id
    assert client.wait(done, timeout=60).status == "completed", cluster.logs()
    assert client.wait(undone, timeout=60).status == "compensated", cluster.logs()
    assert [s for s in _statuses(client, done) if s[0] == "b"] == [
        ("b", "action", 1, "failed"),
        ("b", "action", 2, "succeeded"),
    ]
    assert [(s, d, st) for s, d, _, st in _statuses(client, undone) if d == "compensation"] == [
        ("b", "compensation", "succeeded"),
        ("a", "compensation", "succeeded"),
    ]
    vhost = module_vhost.rsplit("/", 1)[1]
    queues = dict(
        line.split("\t")
        for line in _rabbitmqctl("list_queues", "-q", "-p", vhost, "name", "type").splitlines()
        if "\t" in line and not line.startswith("name")
    )
    assert queues.get("work") == "quorum" and queues.get("sagakit") == "quorum", queues


def test_an_eager_saga_runs_its_steps_in_one_delivery_on_rabbitmq(
    client: Client, cluster: Cluster
) -> None:
    """The carrier's queue comes from AMQP's routing key, as it does from Redis's."""
    done = client.start("eager", {}).saga_id
    undone = client.start("eager", {"faults": {"c": ["fail"]}}).saga_id
    assert client.wait(done, timeout=60).status == "completed", cluster.logs()
    assert client.wait(undone, timeout=60).status == "compensated", cluster.logs()
    tried = {a.step: a for a in client.attempts(done)}
    assert {tried[s].carried_by for s in "bcd"} == {tried["a"].task_id}, tried
    undos = [a for a in client.attempts(undone) if a.direction == "compensation"]
    assert [a.step for a in undos] == ["b", "a"]
    assert all(a.carried_by is not None for a in undos)


def test_a_worker_killed_mid_step_does_not_lose_the_saga(
    pg_databases: Callable[[], str],
    vhost: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """RabbitMQ gives the killed worker's unacknowledged message to the survivor at once:
    attempt 1 runs again there unless the sweeper has timed it out first (the dead worker's
    heartbeat), and either way the saga completes with b's effect recorded once."""
    cluster = _cluster(pg_databases(), vhost, tmp_path)
    client = Client(client_system(cluster.env))
    try:
        victim = cluster.start("-c", "1", name="victim")
        saga_id = client.start("linear", {"faults": {"b": ["slow_first:3"]}}).saga_id
        wait_for(lambda: started(client, saga_id, "b"), 30, "b to start")
        cluster.kill(victim)
        killed_at = time.monotonic()
        cluster.start("-c", "2", name="survivor")
        record = client.wait(saga_id, timeout=60)
        recovery = time.monotonic() - killed_at
        assert record.status == "completed", cluster.logs()
        b = [(a.attempt, a.status) for a in client.attempts(saga_id) if a.step == "b"]
        assert b in ([(1, "succeeded")], [(1, "timed_out"), (2, "succeeded")]), b
        for step in ("a", "c", "d"):
            ran = [a.status for a in client.attempts(saga_id) if a.step == step]
            assert ran == ["succeeded"], (step, ran)
    finally:
        client.system.close()
        cluster.stop()
    with capsys.disabled():
        print(f"\nRabbitMQ, recovery after SIGKILL mid-step: {recovery:.1f}s (b: {b})")


@pytest.fixture
def rabbit(tmp_path: Path) -> Iterator[RabbitServer]:
    try:
        server = RabbitServer(tmp_path / "rabbit")
    except RuntimeError as exc:
        if CI:
            pytest.fail(f"cannot run a private RabbitMQ: {exc}")
        pytest.skip(f"cannot run a private RabbitMQ: {exc}")
    server.start()
    yield server
    server.stop()


@pytest.mark.chaos
def test_a_broker_restart_loses_no_queued_message(
    pg_databases: Callable[[], str],
    rabbit: RabbitServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    cluster = _cluster(pg_databases(), rabbit.url, tmp_path)
    client = Client(client_system(cluster.env))
    try:
        cluster.start("-c", "1")
        # The first saga occupies the only worker process; the rest wait in the queue.
        ids = [client.start("linear", {"faults": {"a": ["slow_first:2"]}}).saga_id]
        wait_for(lambda: started(client, ids[0], "a"), 30, "a to start")
        ids += [client.start("linear", {}).saga_id for _ in range(5)]
        rabbit.restart()
        restarted_at = time.monotonic()
        for saga_id in ids:
            assert client.wait(saga_id, timeout=120).status == "completed", cluster.logs()
        recovery = time.monotonic() - restarted_at
        # The queued messages were kept through the restart: none was sent twice.
        sends = [client.steps(saga_id)[0].send_count for saga_id in ids[1:]]
        assert sends == [1] * 5, sends
    finally:
        client.system.close()
        cluster.stop()
    with capsys.disabled():
        print(f"\nrecovery after a RabbitMQ restart with 5 queued messages: {recovery:.1f}s")
