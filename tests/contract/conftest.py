"""The saga log's contract runs against SQLite and PostgreSQL alike."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from sagakit.store import SqlSagaStore, make_engine, upgrade
from sagakit.store.schema import metadata


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: object) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/log.db"
        return
    url: str = request.getfixturevalue("pg_url")
    engine = make_engine(url)
    upgrade(engine)
    yield url
    with engine.begin() as conn:  # leave the session database empty for the next test
        for table in reversed(metadata.sorted_tables):
            conn.execute(table.delete())
    engine.dispose()


@pytest.fixture
def store(db_url: str) -> Iterator[SqlSagaStore]:
    engine = make_engine(db_url)
    upgrade(engine)
    yield SqlSagaStore(engine)
    engine.dispose()
