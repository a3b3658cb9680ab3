"""Which driver errors mean "unreachable", and the one line that says so (no server needed)."""

from __future__ import annotations

import sqlite3

import kombu.exceptions
import psycopg
import pytest
import redis
import sqlalchemy as sa
from kombu import Connection

from sagakit.outages import BROKER, unreachable
from sagakit.settings import Settings
from tests.support.redis_server import free_port


@pytest.fixture
def closed() -> int:
    return free_port()  # nothing listens there


def settings(port: int) -> Settings:
    return Settings(
        database_url=f"postgresql://app:secret@127.0.0.1:{port}/app",
        broker_url=f"redis://:secret@127.0.0.1:{port + 1}/0",
        redis_url=f"redis://:secret@127.0.0.1:{port + 2}/0",
    )


def test_a_refused_database_connection_names_the_saga_logs_database(closed: int) -> None:
    config = settings(closed)
    with pytest.raises(sa.exc.OperationalError) as caught:
        sa.create_engine(config.database_url.replace("postgresql", "postgresql+psycopg")).connect()
    outage = unreachable(caught.value, config)
    assert outage is not None
    assert str(outage) == (
        f"the saga log's database at 127.0.0.1:{closed} is unreachable (connection refused): "
        "check SAGAKIT_DATABASE_URL and that PostgreSQL is running"
    )
    assert "secret" not in str(outage)
    assert not outage.refused


def test_redis_and_kombu_errors_name_the_broker_or_the_event_stream(closed: int) -> None:
    config = settings(closed)
    with pytest.raises(redis.ConnectionError) as caught:
        redis.Redis.from_url(config.broker_url, socket_connect_timeout=1).ping()
    assert str(unreachable(caught.value, config)).startswith(
        f"the broker at 127.0.0.1:{closed + 1} is unreachable (connection refused): "
        "check SAGAKIT_BROKER_URL"
    )
    assert config.redis_url is not None
    with pytest.raises(redis.ConnectionError) as caught:
        redis.Redis.from_url(config.redis_url, socket_connect_timeout=1).ping()
    assert str(unreachable(caught.value, config)).startswith(
        f"the event stream's Redis at 127.0.0.1:{closed + 2} is unreachable"
    )
    with pytest.raises(kombu.exceptions.OperationalError) as kombu_error:
        Connection(config.broker_url).ensure_connection(max_retries=0, timeout=2)
    assert str(unreachable(kombu_error.value, config)).startswith(
        f"the broker at 127.0.0.1:{closed + 1} is unreachable (connection refused)"
    )


def test_a_bare_socket_error_needs_to_be_told_what_it_was_talking_to(closed: int) -> None:
    config = settings(closed)
    error = ConnectionRefusedError(111, "Connection refused")
    assert unreachable(error, config) is None
    assert str(unreachable(error, config, kind=BROKER)).startswith(
        f"the broker at 127.0.0.1:{closed + 1} is unreachable (connection refused)"
    )


def test_a_sqlite_file_that_cannot_be_opened_says_where(tmp_path: object) -> None:
    url = "sqlite:////nonexistent-dir/sagakit.db"
    with pytest.raises(sa.exc.OperationalError) as caught:
        sa.create_engine(url).connect()
    assert str(unreachable(caught.value, Settings(database_url=url))) == (
        "the saga log's database at /nonexistent-dir/sagakit.db cannot be opened (unable to "
        "open the database file): check SAGAKIT_DATABASE_URL and that its directory exists"
    )


@pytest.mark.parametrize(
    "error",
    [
        sa.exc.OperationalError("SELECT 1", {}, sqlite3.OperationalError("database is locked")),
        sa.exc.OperationalError("SELECT 1", {}, psycopg.errors.QueryCanceled("canceled")),
        sa.exc.OperationalError("SELECT 1", {}, psycopg.errors.DeadlockDetected("deadlock")),
        sa.exc.ProgrammingError("SELECT 1", {}, psycopg.errors.UndefinedTable("no table")),
        ValueError("not a connection error"),
    ],
)
def test_other_errors_are_not_outages(error: Exception) -> None:
    assert unreachable(error, settings(5432)) is None


def test_a_server_going_down_mid_session_is_an_outage() -> None:
    cut = sa.exc.OperationalError(
        "SELECT 1",
        {},
        psycopg.errors.AdminShutdown("terminating connection due to administrator command"),
    )
    outage = unreachable(cut, settings(5432))
    assert outage is not None
    assert "is unreachable (the server shut down)" in str(outage)
