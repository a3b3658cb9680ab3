"""The worker's log filter, fed the records Celery and sagakit log through an outage."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
import redis
import sqlalchemy as sa
from celery.worker.consumer.consumer import CONNECTION_ERROR, CONNECTION_RETRY

from sagakit.cli.outage_log import LOGGERS, OutageLog
from sagakit.settings import Settings
from tests.support.redis_server import free_port


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.levelname} {record.name} {record.getMessage()}")
        assert record.exc_info is None  # never a traceback


@pytest.fixture
def port() -> int:
    return free_port()


@pytest.fixture
def lines(port: int) -> Iterator[list[str]]:
    settings = Settings(
        database_url=f"postgresql+psycopg://app@127.0.0.1:{port}/app",
        broker_url=f"redis://127.0.0.1:{port}/0",
    )
    outages = OutageLog(settings)
    collect = Collect()
    loggers = [logging.getLogger(name) for name in LOGGERS]
    for logger in loggers:
        logger.addFilter(outages)
        logger.addHandler(collect)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    yield collect.lines
    for logger in loggers:
        logger.removeFilter(outages)
        logger.removeHandler(collect)
        logger.setLevel(logging.NOTSET)
        logger.propagate = True


def broker_error(port: int) -> Exception:
    try:
        redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=1).ping()
    except redis.ConnectionError as exc:
        return exc
    raise AssertionError("something answers on the closed port")


def database_error(port: int) -> Exception:
    try:
        sa.create_engine(f"postgresql+psycopg://app@127.0.0.1:{port}/app").connect()
    except sa.exc.OperationalError as exc:
        return exc
    raise AssertionError("something answers on the closed port")


def test_a_broker_outage_is_one_line_then_one_when_it_is_back(lines: list[str], port: int) -> None:
    consumer = logging.getLogger("celery.worker.consumer.consumer")
    error = broker_error(port)
    consumer.warning("%s (%r)", CONNECTION_RETRY, error)
    consumer.info("Skipping prefetch count reduction after connection restart")
    for attempt in (1, 2, 3):
        consumer.error(CONNECTION_ERROR, "redis://...", error, f"Trying again ({attempt}/100)")
    logging.getLogger("sagakit.runtime.dispatch").warning("broker refused %d: %s", 1, error)
    logging.getLogger("celery.worker.consumer.connection").info("Connected to %s", "redis://")
    assert len(lines) == 2, lines
    assert lines[0] == (
        f"WARNING celery.worker.consumer.consumer the broker at 127.0.0.1:{port} is unreachable "
        "(connection refused): check SAGAKIT_BROKER_URL and that Redis is running; retrying "
        "until it answers"
    )
    assert lines[1].startswith(
        f"WARNING celery.worker.consumer.connection the broker at 127.0.0.1:{port} answers "
        "again after "
    )
    assert lines[1].endswith("s (4 repeated errors not logged)")

    # A first connection is not a recovery, and the next outage is said again.
    logging.getLogger("celery.worker.consumer.connection").info("Connected to %s", "redis://")
    consumer.warning("%s (%r)", CONNECTION_RETRY, error)
    assert lines[2] == "INFO celery.worker.consumer.connection Connected to redis://"
    assert "is unreachable" in lines[3]


def test_the_sweeper_opens_and_closes_a_database_outage(lines: list[str], port: int) -> None:
    error = database_error(port)
    sweeper = logging.getLogger("sagakit.runtime.worker")
    trace = logging.getLogger("celery.app.trace")
    sweeper.warning("sweep failed (%s); retrying every %ss", error, 1.0)
    trace.error("Task work.a raised unexpected: %r", error, exc_info=(type(error), error, None))
    sweeper.warning("sweeps work again")
    assert len(lines) == 2, lines
    assert lines[0].startswith(
        f"WARNING sagakit.runtime.worker the saga log's database at 127.0.0.1:{port} is "
        "unreachable (connection refused)"
    )
    assert lines[1].startswith(
        f"WARNING sagakit.runtime.worker the saga log's database at 127.0.0.1:{port} answers "
        "again after "
    )


def test_an_error_no_lasting_part_noticed_is_said_each_time_in_one_line(
    lines: list[str], port: int
) -> None:
    error = database_error(port)
    trace = logging.getLogger("celery.app.trace")
    for _ in range(2):
        trace.error("Task work.a raised: %r", error, exc_info=(type(error), error, None))
    assert len(lines) == 2
    assert all("the saga log's database" in line and "retrying" not in line for line in lines)
    logging.getLogger("sagakit.runtime.worker").warning("sweeps work again")
    assert lines[-1] == "WARNING sagakit.runtime.worker sweeps work again"  # nothing to close
