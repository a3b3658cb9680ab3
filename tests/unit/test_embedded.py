"""The embedded default: SQLite and a real in-process Celery worker, no services."""

from __future__ import annotations

import io
import logging

import pytest

from sagakit import Settings, System
from sagakit.logs import TEXT_FORMAT, ContextFilter
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
    engine = system.engine
    done = engine.start("linear", {}).saga_id
    failed = engine.start("fanout", {"faults": {"b1": ["fail"]}}).saga_id
    assert engine.wait(done, 30).status == "completed"
    assert engine.wait(failed, 30).status == "compensated"
    assert steps_with(engine, done, "step_completed") == ["a", "b", "c", "d"]
    assert "a" in assert_compensated_in_reverse(engine, failed)
    workers = {a.worker for a in engine.attempts(done)}
    assert len(workers) == 1 and None not in workers


def test_log_lines_inside_a_step_carry_saga_step_and_attempt(system: System) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(ContextFilter())
    handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    logger = logging.getLogger("sagakit")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        saga_id = system.engine.start("linear", {"faults": {"b": ["transient:1"]}}).saga_id
        system.engine.wait(saga_id, 30)
    finally:
        logger.removeHandler(handler)
    lines = stream.getvalue().splitlines()
    assert any(f"[{saga_id} b #2] attempt succeeded" in line for line in lines), lines
    assert any(f"[{saga_id} d #1] attempt succeeded" in line for line in lines), lines
