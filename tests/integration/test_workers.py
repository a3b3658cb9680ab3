"""Sagas on real `sagakit worker` processes, PostgreSQL and Redis, read back from the log."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from sagakit import Engine, InvalidTransition
from tests.support.cluster import Cluster, wait_for
from tests.support.history import assert_compensated_in_reverse, steps_with

pytestmark = [pytest.mark.integration, pytest.mark.postgres, pytest.mark.redis]


def run(
    engine: Engine,
    saga_type: str,
    faults: dict[str, list[str]] | None = None,
    timeout: float = 60.0,
    **extra: object,
) -> str:
    saga_id = engine.start(saga_type, {"faults": faults or {}, **extra}).saga_id
    engine.wait(saga_id, timeout=timeout)
    return saga_id


def test_four_step_saga_completes_in_order(engine: Engine, cluster: Cluster) -> None:
    saga_id = run(engine, "linear")
    record = engine.get(saga_id)
    assert record.status == "completed", cluster.logs()
    assert steps_with(engine, saga_id, "step_completed") == ["a", "b", "c", "d"]
    assert steps_with(engine, saga_id, "step_compensated") == []
    attempts = engine.attempts(saga_id)
    assert all(a.worker and a.started_at and a.finished_at for a in attempts)
    assert [a.task_id for a in attempts] == [
        f"{saga_id}.01.a.fwd.1",
        f"{saga_id}.02.b.fwd.1",
        f"{saga_id}.03.c.fwd.1",
        f"{saga_id}.04.d.fwd.1",
    ]


@pytest.mark.parametrize(
    ("failing", "undone"),
    [
        ("a", []),
        ("b", ["a"]),
        ("c", ["b", "a"]),
        ("d", ["c", "b", "a"]),
    ],
)
def test_failure_at_each_step_compensates_earlier_steps_in_reverse(
    engine: Engine, failing: str, undone: list[str]
) -> None:
    saga_id = run(engine, "linear", {failing: ["fail"]})
    record = engine.get(saga_id)
    assert record.status == "compensated"
    assert record.failed_step == failing
    assert assert_compensated_in_reverse(engine, saga_id) == undone


def test_parallel_group_with_a_failing_branch(engine: Engine) -> None:
    saga_id = run(engine, "fanout", {"b2": ["slow:0.3", "fail"], "b3": ["slow:1.0"]})
    assert engine.get(saga_id).status == "compensated"
    completed = steps_with(engine, saga_id, "step_completed")
    assert set(completed) == {"a", "b1", "b3"}
    # b3 was still running when b2 failed: it was waited for, then undone first.
    assert assert_compensated_in_reverse(engine, saga_id)[0] == "b3"
    assert "d" not in steps_with(engine, saga_id, "step_scheduled")


def test_transient_failures_are_retried_and_recorded_as_attempts(engine: Engine) -> None:
    saga_id = run(engine, "linear", {"b": ["transient:2"]})
    assert engine.get(saga_id).status == "completed"
    b_attempts = [a for a in engine.attempts(saga_id) if a.step == "b"]
    assert [(a.attempt, a.status) for a in b_attempts] == [
        (1, "failed"),
        (2, "failed"),
        (3, "succeeded"),
    ]
    assert "flaked on attempt 1" in (b_attempts[0].error or "")
    assert "Traceback" in (b_attempts[0].traceback or "")
    assert steps_with(engine, saga_id, "step_failed") == ["b", "b"]


def test_failed_compensation_needs_an_operator_then_retry_resumes(
    engine: Engine, tmp_path: Path
) -> None:
    blocker = tmp_path / "blocked"
    blocker.write_text("the compensation of b fails while this file exists")
    saga_id = run(engine, "linear", {"d": ["fail"], "b": [f"undo_fail_while:{blocker}"]})
    record = engine.get(saga_id)
    assert record.status == "failed"
    assert record.failed_step == "b"
    assert "compensation of step 'b' failed after 3 attempts" in (record.reason or "")
    assert steps_with(engine, saga_id, "step_compensated") == ["c"]

    blocker.unlink()
    engine.retry(saga_id)
    record = engine.wait(saga_id, timeout=30)
    assert record.status == "compensated"
    assert steps_with(engine, saga_id, "step_compensated") == ["c", "b", "a"]
    assert "saga_resumed" in [h.event for h in engine.history(saga_id)]
    b_undo = [
        a.attempt
        for a in engine.attempts(saga_id)
        if a.step == "b" and a.direction == "compensation"
    ]
    assert b_undo == [1, 2, 3, 4]


def test_starting_twice_with_one_idempotency_key_returns_one_saga(engine: Engine) -> None:
    key = f"order-{uuid.uuid4()}"
    first = engine.start("linear", {}, idempotency_key=key)
    second = engine.start("linear", {"ignored": True}, idempotency_key=key)
    assert first.created and not second.created
    assert second.saga_id == first.saga_id
    assert engine.wait(first.saga_id, timeout=30).status == "completed"
    assert len(steps_with(engine, first.saga_id, "saga_started")) == 1


def test_cancel_waits_for_the_running_step_then_compensates(engine: Engine) -> None:
    saga_id = engine.start("linear", {"faults": {"b": ["slow:1.5"]}}).saga_id
    wait_for(lambda: "b" in steps_with(engine, saga_id, "step_started"), 20, "b to start")
    engine.cancel(saga_id, "customer changed their mind")
    record = engine.wait(saga_id, timeout=30)
    assert record.status == "compensated"
    assert record.reason == "cancelled: customer changed their mind"
    assert steps_with(engine, saga_id, "step_completed") == ["a", "b"]
    assert steps_with(engine, saga_id, "step_compensated") == ["b", "a"]
    assert "c" not in steps_with(engine, saga_id, "step_scheduled")


def test_cancel_after_the_pivot_is_refused(engine: Engine) -> None:
    saga_id = engine.start("pivoted", {"faults": {"r": ["slow:1.5"]}}).saga_id
    wait_for(lambda: "r" in steps_with(engine, saga_id, "step_started"), 20, "r to start")
    with pytest.raises(InvalidTransition, match="pivot"):
        engine.cancel(saga_id)
    assert engine.wait(saga_id, timeout=30).status == "completed"


def test_retriable_step_after_pivot_is_retried_until_it_succeeds(engine: Engine) -> None:
    saga_id = run(engine, "pivoted", {"r": ["transient:4"]})
    assert engine.get(saga_id).status == "completed"
    assert len([a for a in engine.attempts(saga_id) if a.step == "r"]) == 5
    assert steps_with(engine, saga_id, "step_compensated") == []


def test_fan_out_over_input_items(engine: Engine) -> None:
    saga_id = run(
        engine, "mapped", {"each[1]": ["fail"], "each[0]": ["slow:0.5"]}, items=["x", "y", "z"]
    )
    assert engine.get(saga_id).status == "compensated"
    compensated = assert_compensated_in_reverse(engine, saga_id)
    assert set(compensated) == {"a", "each[0]", "each[2]"}
