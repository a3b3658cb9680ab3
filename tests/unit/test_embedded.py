"""The embedded default: SQLite and a real in-process Celery worker, no services."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from celery.signals import task_prerun

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


@pytest.fixture
def deliveries() -> Iterator[list[str]]:
    """The names of the step tasks Celery delivered, in order."""
    seen: list[str] = []

    def count(sender: Any = None, **_: Any) -> None:
        seen.append(sender.name)

    task_prerun.connect(count, weak=False)
    yield seen
    task_prerun.disconnect(count)


def test_an_eager_saga_runs_a_run_of_steps_on_one_delivery(
    system: System, deliveries: list[str]
) -> None:
    client = Client(system)
    done = client.start("eager", {}).saga_id
    assert client.wait(done, 30).status == "completed"
    assert steps_with(client, done, "step_completed") == ["a", "b", "c", "d"]
    # a's message runs them all, each recorded as its own attempt.
    assert deliveries == ["work.a"]
    tried = {a.step: a for a in client.attempts(done)}
    assert len(tried) == 4 and all(a.status == "succeeded" and a.worker for a in tried.values())
    # The history says which delivery ran each: the API and the dashboard link to it.
    assert tried["a"].carried_by is None
    assert {tried[s].carried_by for s in "bcd"} == {tried["a"].task_id}
    rows = {s.state.name: s for s in system.queries.steps(done)}
    assert rows["b"].carrier == rows["c"].carrier == rows["d"].carrier == rows["a"].task_id
    assert rows["a"].carrier is None


def test_the_sweeper_times_out_a_carried_attempt_that_overruns(sqlite_url: str) -> None:
    settings = Settings(
        database_url=sqlite_url,
        imports=["tests.support.workload"],
        sweep_interval=0.2,
        timeout_grace=0.5,
    )
    with System(settings) as running:
        running.start_embedded()
        client = Client(running)
        saga_id = client.start("eager_hasty", {"faults": {"h": ["slow_first:4"]}}).saga_id
        assert client.wait(saga_id, 30).status == "completed"
        tried = {(a.step, a.attempt): a for a in client.attempts(saga_id)}
    # Attempt 1 ran where a finished, past its 1 s; the sweeper ended it, attempt 2 ran.
    assert tried["h", 1].status == "timed_out"
    assert tried["h", 2].status == "succeeded"


def test_an_eager_saga_compensates_on_the_delivery_that_failed(
    system: System, deliveries: list[str]
) -> None:
    client = Client(system)
    failed = client.start("eager", {"faults": {"c": ["fail"]}}).saga_id
    assert client.wait(failed, 30).status == "compensated"
    assert assert_compensated_in_reverse(client, failed) == ["b", "a"]
    assert deliveries == ["work.a"]


def test_a_step_whose_task_has_a_rate_limit_gets_a_message_of_its_own(
    system: System, deliveries: list[str]
) -> None:
    client = Client(system)
    done = client.start("eager_limited", {}).saga_id
    assert client.wait(done, 30).status == "completed"
    assert deliveries == ["work.a", "work.l"]  # d runs in l's delivery


def test_an_eager_saga_sends_parallel_branches_to_the_broker(
    system: System, deliveries: list[str]
) -> None:
    client = Client(system)
    done = client.start("eager_fanout", {}).saga_id
    assert client.wait(done, 30).status == "completed"
    # The branches go out as messages, to run in parallel; the one that finishes last
    # runs c where it is.
    assert sorted(deliveries) == ["work.a", "work.b1", "work.b2"]
