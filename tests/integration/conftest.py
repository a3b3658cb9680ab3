"""Real worker subprocesses on the session's PostgreSQL database and Redis."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from sagakit import Settings, System
from tests.support.client import Client
from tests.support.cluster import Cluster
from tests.support.postgres_server import PostgresServer
from tests.support.redis_server import RedisServer


def worker_env(pg_url: str, broker_url: str) -> dict[str, str]:
    """Environment shared by the workers and the test process."""
    return {
        "SAGAKIT_DATABASE_URL": pg_url,
        "SAGAKIT_BROKER_URL": broker_url,
        "SAGAKIT_REDIS_URL": broker_url,
        "SAGAKIT_IMPORTS": "tests.support.workload",
        "SAGAKIT_SWEEP_INTERVAL": "0.3",
        "SAGAKIT_REDRIVE_AFTER": "4",
        "SAGAKIT_TIMEOUT_GRACE": "1",
        "SAGAKIT_WORKER_LOST_AFTER": "4",
        "SAGAKIT_VISIBILITY_TIMEOUT": "30",
        "SAGAKIT_LOG_LEVEL": "INFO",
    }


def client_system(env: dict[str, str]) -> System:
    """A System in the test process: starts sagas and reads the log, runs no worker."""
    return System(
        Settings(
            database_url=env["SAGAKIT_DATABASE_URL"],
            broker_url=env["SAGAKIT_BROKER_URL"],
            imports=["tests.support.workload"],
            redrive_after=4.0,
            timeout_grace=1.0,
            # Like every process of a deployment, the one that starts sagas shares the
            # workers' setting: it sends the first messages.
            time_limits=env.get("SAGAKIT_TIME_LIMITS", "").lower() in ("1", "true"),
        )
    )


@pytest.fixture(scope="module")
def cluster(
    pg_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    workers = Cluster(worker_env(pg_url, redis_url), tmp_path_factory.mktemp("workers"))
    try:
        workers.start("-c", "2")
        workers.start("-c", "2", "--no-sweeper")
        yield workers
    finally:
        workers.stop()


@pytest.fixture(scope="module")
def client(cluster: Cluster) -> Iterator[Client]:
    system = client_system(cluster.env)
    yield Client(system)
    system.close()


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    """A private PostgreSQL server for tests that stop and start it."""
    try:
        server = PostgresServer()
    except (RuntimeError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"cannot run a private PostgreSQL: {exc}")
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def pg(postgres: PostgresServer) -> Iterator[PostgresServer]:
    """The private server, running at the start of the test and again after it."""
    yield postgres
    if not (postgres.data / "postmaster.pid").exists():
        postgres.start()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[RedisServer]:
    """A private, running Redis server for tests that stop and start it."""
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()
