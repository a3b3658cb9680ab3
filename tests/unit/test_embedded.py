"""The embedded default: SQLite and a real in-process Celery worker, no services."""

from __future__ import annotations

import io
import logging

import pytest

from sagakit import Settings, System
from sagakit.logs import TEXT_FORMAT, ContextFilter
from tests.support.client import Client
from tests.support.history import assert_compensated_in_reverse, steps_with


@pytest.fixture
def system(sqlite_url: str) -> System:
    settings = Settings(
        database_url=sqlite_url, imports=["tests.support.workload"], sweep_interval=0.2
    )
    with System(settings) as running:
        running.start_embedded()
        yield running


def test_embedded_runs_sagas_end_to_end(system: System) -> None:
    client = Client(system)
    done = client.start("linear", {}).saga_id
    failed = client.start("fanout", {"faults": {"b1": ["fail"]}}).saga_id
    assert client.wait(done, 30).status == "completed"
    assert client.wait(failed, 30).status == "compensated"
    assert steps_with(client, done, "step_completed") == ["a", "b", "c", "d"]
    assert "a" in assert_compensated_in_reverse(client, failed)
    workers = {a.worker for a in client.attempts(done)}
    assert len(workers) == 1 and None not in workers


def test_log_lines_about_a_saga_carry_saga_step_and_attempt(system: System) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(ContextFilter())
    handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    loggers = [logging.getLogger(name) for name in ("tests", "celery.app.trace")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    try:
        client = Client(system)
        saga_id = client.start("linear", {"faults": {"b": ["transient:1"]}}).saga_id
        client.wait(saga_id, 30)
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.removeHandler(handler)
            logger.setLevel(level)
    lines = stream.getvalue().splitlines()
    # Inside the step (sagakit's context) and Celery's own lines (told by the task id).
    assert any(f"[{saga_id} b #2] performing action" in line for line in lines), lines
    raised = [line for line in lines if "raised unexpected" in line]
    assert raised and f"[{saga_id} b #1]" in raised[0], lines
