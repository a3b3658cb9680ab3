"""A worker whose database is down at start: it retries, doubling its wait up to 30 s, and
says so once. The waits are recorded instead of slept."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import psycopg
import pytest

import sagakit.store
from sagakit.cli import processes
from sagakit.cli.outage_log import OutageLog
from sagakit.outages import Unreachable
from sagakit.settings import Settings
from tests.support.redis_server import free_port

REFUSALS = 8


def test_the_wait_doubles_from_one_second_up_to_thirty(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()  # nothing listens there: each attempt is really refused
    settings = Settings(database_url=f"postgresql+psycopg://app@127.0.0.1:{port}/app")
    upgrade = sagakit.store.upgrade_database
    attempts: list[str] = []
    waits: list[float] = []

    def upgrade_until_it_answers(url: str) -> None:
        attempts.append(url)
        if len(attempts) <= REFUSALS:
            upgrade(url)  # raises: connection refused

    monkeypatch.setattr(sagakit.store, "upgrade_database", upgrade_until_it_answers)
    monkeypatch.setattr(processes, "time", SimpleNamespace(sleep=waits.append))
    caplog.set_level(logging.WARNING, logger=processes.logger.name)

    processes._migrate_when_reachable(settings, OutageLog(settings))

    assert waits == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    assert processes.MAX_DELAY == 30.0
    assert len(attempts) == REFUSALS + 1
    where = f"the saga log's database at 127.0.0.1:{port}"
    down, up = [record.getMessage() for record in caplog.records]  # once each
    assert down == (
        f"{where} is unreachable (connection refused): check SAGAKIT_DATABASE_URL and that "
        "PostgreSQL is running; retrying until it answers"
    )
    assert up.startswith(f"{where} answers again")


def test_a_refused_login_is_not_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings(database_url="postgresql+psycopg://nobody@127.0.0.1:5432/app")
    waits: list[float] = []

    def refuse(url: str) -> None:
        raise psycopg.OperationalError(
            'connection failed: connection to server at "127.0.0.1", port 5432 failed: '
            'FATAL:  role "nobody" does not exist'
        )

    monkeypatch.setattr(sagakit.store, "upgrade_database", refuse)
    monkeypatch.setattr(processes, "time", SimpleNamespace(sleep=waits.append))

    with pytest.raises(Unreachable, match='role "nobody" does not exist'):
        processes._migrate_when_reachable(settings, OutageLog(settings))
    assert waits == []
