"""Service fixtures: tests that need PostgreSQL or Redis skip locally but fail in CI."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator

import pytest
import redis
import sqlalchemy as sa
from hypothesis import settings

# Step timeout of the test workload (tests/support/workload.py), the same in every process.
os.environ.setdefault("WORKLOAD_STEP_TIMEOUT", "8")

CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

# Property tests explore new examples on every local run; CI replays a fixed sequence so a
# submission is judged on the same examples every time.
settings.register_profile("ci", derandomize=True, print_blob=True)
if CI:
    settings.load_profile("ci")
PG_ADMIN_URL = os.environ.get(
    "SAGAKIT_TEST_DATABASE_URL", "postgresql+psycopg://postgres:postgres@127.0.0.1:5432/postgres"
)


def _redis_url() -> str:
    """The Redis database of this test process: under pytest-xdist, one per worker (gw0 +0...)."""
    url = os.environ.get("SAGAKIT_TEST_REDIS_URL", "redis://127.0.0.1:6379/11")
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if not worker.startswith("gw"):
        return url
    base, _, db = url.rpartition("/")
    return f"{base}/{int(db or 0) + int(worker[2:])}"


REDIS_URL = _redis_url()


def _unavailable(what: str, why: Exception) -> None:
    message = f"{what} is not reachable: {why}"
    if CI:
        pytest.fail(f"{message} (required in CI)")
    pytest.skip(message)


@pytest.fixture(scope="session")
def pg_databases() -> Iterator[Callable[[], str]]:
    """Make fresh PostgreSQL databases on demand; all are dropped at the end of the session."""
    admin_url = sa.make_url(PG_ADMIN_URL).set(drivername="postgresql+psycopg")
    try:
        admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except Exception as exc:
        _unavailable("PostgreSQL", exc)
    made: list[str] = []

    def make() -> str:
        name = f"sagakit_test_{uuid.uuid4().hex[:10]}"
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        made.append(name)
        return admin_url.set(database=name).render_as_string(hide_password=False)

    yield make
    with admin.connect() as conn:
        for name in made:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session")
def pg_url(pg_databases: Callable[[], str]) -> str:
    """The session's PostgreSQL database."""
    return pg_databases()


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The Redis database tests may use (flushed at the start of the session)."""
    try:
        client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
        client.flushdb()
    except Exception as exc:
        _unavailable("Redis", exc)
    return REDIS_URL


@pytest.fixture
def sqlite_url(tmp_path: object) -> str:
    """A SQLite file of this test's own."""
    return f"sqlite:///{tmp_path}/sagakit.db"
