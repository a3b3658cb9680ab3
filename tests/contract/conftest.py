"""The saga log's contract runs against SQLite and PostgreSQL alike."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from sagakit.store import make_db, upgrade
from sagakit.store.schema import metadata, metrics_state

KEEP = {"sagakit_metrics_state", "sagakit_keys", "alembic_version"}


def _empty(url: str) -> None:
    db = make_db(url)
    upgrade(db)
    with db.begin() as conn:  # leave the session database empty for the next test
        for table in reversed(metadata.sorted_tables):
            if table.name not in KEEP:
                conn.execute(table.delete())
        # Nothing folded yet: a test that folded must not hide the next test's rows.
        conn.execute(metrics_state.update().values(watermark=datetime(1970, 1, 1, tzinfo=UTC)))
    db.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def dialect(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def db_url(dialect: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if dialect == "sqlite":
        yield f"sqlite:///{tmp_path}/log.db"
        return
    url: str = request.getfixturevalue("pg_url")
    _empty(url)
    yield url
    _empty(url)


@pytest.fixture
def fresh_db_url(dialect: str, request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], str]:
    """Make another empty saga log database of the same dialect."""
    counter = itertools.count()
    if dialect == "sqlite":
        return lambda: f"sqlite:///{tmp_path}/log{next(counter)}.db"
    make: Callable[[], str] = request.getfixturevalue("pg_databases")
    return make


@pytest.fixture
def empty_db_url(dialect: str, request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], str]:
    """An empty, migrated saga log for each call: a new SQLite file, or the session's
    PostgreSQL database emptied (far cheaper than a database per call, for property tests
    that need a clean log per example)."""
    counter = itertools.count()
    if dialect == "sqlite":
        return lambda: f"sqlite:///{tmp_path}/empty{next(counter)}.db"
    url: str = request.getfixturevalue("pg_url")

    def emptied() -> str:
        _empty(url)
        return url

    return emptied
