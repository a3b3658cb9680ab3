"""`sagakit.idempotency`: the key table lives in the service's database, made by the service."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa

from sagakit import idempotency
from sagakit.idempotency import ensure_table, once


def test_the_table_has_a_schema_of_its_own() -> None:
    assert list(idempotency.metadata.tables) == ["sagakit_idempotency_keys"]


def test_ensure_table_creates_it_once_and_work_runs_once_per_key(sqlite_url: str) -> None:
    engine = sa.create_engine(sqlite_url)
    ensure_table(engine)
    ensure_table(engine)  # present: nothing to do
    assert sa.inspect(engine).get_table_names() == ["sagakit_idempotency_keys"]
    runs: list[int] = []

    def work() -> dict[str, Any]:
        runs.append(1)
        return {"run": len(runs)}

    results = []
    for _ in range(2):
        with engine.begin() as conn:
            results.append(once(conn, "s1:step:action", work))
    assert results == [{"run": 1}, {"run": 1}]
    assert len(runs) == 1
    engine.dispose()


def test_work_that_fails_leaves_no_key(sqlite_url: str) -> None:
    engine = sa.create_engine(sqlite_url)
    ensure_table(engine)

    def fail() -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"), engine.begin() as conn:
        once(conn, "k", fail)
    with engine.begin() as conn:
        assert once(conn, "k", lambda: "second try") == "second try"
    engine.dispose()


@pytest.mark.postgres
def test_processes_racing_to_create_the_table_all_succeed(
    pg_databases: Callable[[], str],
) -> None:
    engines = [sa.create_engine(pg_databases()) for _ in range(3)]
    try:
        for engine in engines:  # one fresh database per round, six creators racing on each
            barrier = threading.Barrier(6)
            errors: list[BaseException] = []

            def create(
                target: sa.Engine = engine,
                gate: threading.Barrier = barrier,
                errors: list[BaseException] = errors,
            ) -> None:
                try:
                    gate.wait(timeout=10)
                    ensure_table(target)
                except BaseException as exc:
                    errors.append(exc)

            threads = [threading.Thread(target=create) for _ in range(6)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=30)
            assert errors == []
            assert sa.inspect(engine).has_table("sagakit_idempotency_keys")
    finally:
        for engine in engines:
            engine.dispose()
