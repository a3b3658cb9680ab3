"""`sagakit worker` with Celery's worker options, and `sagakit ping`, on real workers.

Workers are started through the installed entry point and observed the way an operator
observes them: `celery inspect` through the broker, and the worker's own log.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import client_system, worker_env
from tests.support.client import Client
from tests.support.cluster import ROOT, SAGAKIT, Cluster, wait_for
from tests.support.redis_server import free_port

pytestmark = [pytest.mark.integration, pytest.mark.postgres, pytest.mark.redis]

CELERY = str(Path(SAGAKIT).parent / "celery")
HOST = socket.gethostname()


class Workers(Cluster):
    """A Cluster whose workers are started with exactly the arguments a test gives."""

    def launch(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        handle = (self.logdir / f"{name}.log").open("wb")
        proc = subprocess.Popen(
            [SAGAKIT, "worker", *args],
            cwd=ROOT,
            env=self.env,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        handle.close()
        self.procs.append(proc)
        return proc

    def ready(self, name: str, proc: subprocess.Popen[bytes]) -> str:
        log = self.logdir / f"{name}.log"
        wait_for(
            lambda: b" ready." in log.read_bytes() or proc.poll() is not None,
            90,
            f"worker {name} to be ready",
        )
        text = log.read_text()
        assert proc.poll() is None, text[-3000:]
        return text


def _inspect(env: dict[str, str], command: str, *nodes: str) -> Any:
    """`celery -A sagakit.celery_app inspect COMMAND -d NODE[,NODE] --json`: node -> reply."""
    destination = ",".join(nodes)
    done = subprocess.run(
        [CELERY, "-A", "sagakit.celery_app", "inspect", command, "-d", destination, "-j"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    replies = json.loads(done.stdout)
    assert set(replies) == set(nodes), replies
    return replies


def _ping(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SAGAKIT, "ping", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture(scope="module")
def workers(
    pg_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    """Three workers started at once: threads, prefork with autoscale, prefork with limits."""
    tag = uuid.uuid4().hex[:8]
    cluster = Workers(worker_env(pg_url, redis_url), tmp_path_factory.mktemp("options"))
    names = {"threads": f"threads-{tag}", "scaled": f"scaled-{tag}", "limited": f"limited-{tag}"}
    try:
        procs = {
            "threads": cluster.launch(
                "threads",
                *("--pool", "threads", "-c", "3", "-n", f"{names['threads']}@%h"),
                *("--max-tasks-per-child", "5", "-Q", "probe", "-l", "debug"),
            ),
            "scaled": cluster.launch(
                "scaled",
                *("-P", "prefork", "--autoscale", "3,1", "--max-tasks-per-child", "5"),
                *("--hostname", f"{names['scaled']}@%h", "--queues", "probe"),
                *("--with-gossip", "--with-mingle", "--loglevel", "DEBUG", "--no-sweeper"),
            ),
            "limited": cluster.launch(
                "limited",
                *("-c", "1", "--max-memory-per-child", "1", "-n", f"{names['limited']}@%h"),
                *("-Q", "work,sagakit"),
            ),
        }
        logs = {key: cluster.ready(key, proc) for key, proc in procs.items()}
        nodes = {key: f"{name}@{HOST}" for key, name in names.items()}
        stats = _inspect(cluster.env, "stats", *nodes.values())
        yield {
            "cluster": cluster,
            "env": cluster.env,
            "nodes": nodes,
            "procs": procs,
            "logs": logs,
            "stats": {key: stats[node] for key, node in nodes.items()},
        }
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def client(workers: dict[str, Any]) -> Iterator[Client]:
    system = client_system(workers["env"])
    yield Client(system)
    system.close()


def test_thread_pool_size_and_node_name_reach_celery(workers: dict[str, Any]) -> None:
    node = workers["nodes"]["threads"]
    stats = workers["stats"]["threads"]
    assert stats["pool"]["implementation"] == "celery.concurrency.thread:TaskPool"
    assert stats["pool"]["max-concurrency"] == 3
    queues = _inspect(workers["env"], "active_queues", node)[node]
    assert [queue["name"] for queue in queues] == ["probe"]


def test_prefork_autoscale_and_max_tasks_per_child_reach_celery(workers: dict[str, Any]) -> None:
    stats = workers["stats"]["scaled"]
    assert stats["pool"]["implementation"] == "sagakit.runtime.pool:TaskPool"  # prefork
    assert stats["pool"]["max-tasks-per-child"] == 5
    assert (stats["autoscaler"]["max"], stats["autoscaler"]["min"]) == (3, 1)


def test_gossip_and_mingle_are_off_unless_asked_for(workers: dict[str, Any]) -> None:
    plain, asked = workers["logs"]["threads"], workers["logs"]["scaled"]
    # -l debug shows each bootstep the consumer starts; a disabled one is never started.
    assert "Consumer: Starting Heart" in plain
    assert "Starting Gossip" not in plain
    assert "Starting Mingle" not in plain
    assert "Consumer: Starting Gossip" in asked
    assert "Consumer: Starting Mingle" in asked
    assert "DEBUG" not in workers["logs"]["limited"]  # without -l: SAGAKIT_LOG_LEVEL (INFO)


def test_max_memory_per_child_replaces_the_pool_process(
    workers: dict[str, Any], client: Client
) -> None:
    node = workers["nodes"]["limited"]
    before = workers["stats"]["limited"]["pool"]["processes"]
    assert len(before) == 1
    saga_id = client.start("linear", {"faults": {}}).saga_id
    assert client.wait(saga_id, timeout=60).status == "completed", workers["cluster"].logs()
    # Every task leaves the child above 1 KiB, so Celery replaces it after each one.
    after = _inspect(workers["env"], "stats", node)[node]["pool"]["processes"]
    assert len(after) == 1
    assert after != before


def test_ping_answers_for_a_consuming_worker(workers: dict[str, Any]) -> None:
    name = workers["nodes"]["threads"].split("@")[0]
    done = _ping(workers["env"], "-n", f"{name}@%h", "--timeout", "10")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"{name}@{HOST}: pong")


def test_ping_fails_in_one_line_for_a_worker_that_is_not_there(workers: dict[str, Any]) -> None:
    done = _ping(workers["env"], "-n", "nobody-here@%h", "--timeout", "1")
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1
    assert done.stderr.startswith(f"unhealthy: nobody-here@{HOST} did not answer within 1s")


def test_ping_fails_while_the_worker_is_stopped(workers: dict[str, Any]) -> None:
    proc = workers["procs"]["threads"]
    name = workers["nodes"]["threads"].split("@")[0]
    os.kill(proc.pid, signal.SIGSTOP)  # alive, but its consumer takes nothing off the broker
    try:
        stopped = _ping(workers["env"], "-n", f"{name}@%h", "--timeout", "2")
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    assert stopped.returncode == 1
    assert "did not answer within 2s" in stopped.stderr
    resumed = _ping(workers["env"], "-n", f"{name}@%h", "--timeout", "10")
    assert resumed.returncode == 0, resumed.stderr


def test_ping_fails_in_one_line_when_the_broker_is_down(workers: dict[str, Any]) -> None:
    env = {**workers["env"], "SAGAKIT_BROKER_URL": f"redis://:secret@127.0.0.1:{free_port()}/0"}
    done = _ping(env, "--timeout", "1")
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1
    assert done.stderr.startswith("unhealthy: cannot reach the broker redis://:**@127.0.0.1:")
    assert "secret" not in done.stderr
