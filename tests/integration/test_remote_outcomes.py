"""A service worker that cannot reach the saga log reports outcomes through `sagakit`."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis

from tests.integration.conftest import client_system, worker_env
from tests.support.client import Client
from tests.support.cluster import ROOT, Cluster, wait_for
from tests.support.history import assert_compensated_in_reverse, steps_with

pytestmark = [pytest.mark.integration, pytest.mark.postgres, pytest.mark.redis]
CELERY = str(Path(sys.executable).parent / "celery")


@contextmanager
def remote_stack(
    pg_url: str, redis_url: str, tmp_path: Path, **extra: str
) -> Iterator[tuple[Client, Cluster]]:
    """A service worker with no saga log on the ``work`` queue, a sagakit worker that
    records its outcomes, and a client; `extra` is added to every process's environment."""
    # A database of its own, two past the session's (11 -> 13; under pytest-xdist each test
    # process has its own session database, so each gets its own here too).
    base, _, db = redis_url.rpartition("/")
    broker = f"{base}/{int(db or 0) + 2}"
    redis.Redis.from_url(broker).flushdb()
    cluster = Cluster({**worker_env(pg_url, broker), **extra}, tmp_path)
    # The service worker: a plain Celery app, no database settings at all.
    env = {k: v for k, v in cluster.env.items() if k != "SAGAKIT_DATABASE_URL"}
    log = (tmp_path / "service.log").open("wb")
    service = subprocess.Popen(
        [
            CELERY,
            "-A",
            "tests.support.remote_app",
            "worker",
            "-Q",
            "work",
            "-c",
            "2",
            "--hostname",
            "service@%h",
            "--without-mingle",
            "--without-gossip",
            "--loglevel",
            "INFO",
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    cluster.procs.append(service)
    try:
        wait_for(
            lambda: b" ready." in (tmp_path / "service.log").read_bytes(),
            60,
            "the service worker",
        )
        cluster.start("-Q", "sagakit", "-c", "1", name="recorder")
        system = client_system(cluster.env)
        try:
            yield Client(system), cluster
        finally:
            system.close()
    finally:
        cluster.stop()
        log.close()


@pytest.fixture
def remote(pg_url: str, redis_url: str, tmp_path: Path) -> Iterator[tuple[Client, Cluster]]:
    with remote_stack(pg_url, redis_url, tmp_path) as stack:
        yield stack


def test_outcomes_travel_through_the_sagakit_queue(remote: tuple[Client, Cluster]) -> None:
    client, cluster = remote
    done = client.start("linear", {}).saga_id
    failed = client.start("linear", {"faults": {"c": ["fail"]}}).saga_id
    assert client.wait(done, timeout=60).status == "completed", cluster.logs()
    assert client.wait(failed, timeout=60).status == "compensated", cluster.logs()
    assert steps_with(client, done, "step_completed") == ["a", "b", "c", "d"]
    assert assert_compensated_in_reverse(client, failed) == ["b", "a"]
    # The recorder claimed the attempts on the service worker's behalf.
    workers = {a.worker or "" for a in client.attempts(done)}
    assert workers and all(w.startswith("service@") for w in workers), workers
