"""undo_plan: what a failure or a cancel now would undo, as decide then undoes it."""

from __future__ import annotations

from sagakit.core.events import CancelRequested
from sagakit.core.machine import UndoPlan, undo_plan
from sagakit.core.state import SagaStatus
from tests.unit.core.test_machine import GROUPED, LINEAR, PIVOTED, Run, undo_all


def test_a_running_saga_would_undo_what_took_effect_latest_first() -> None:
    run = Run(LINEAR)
    run.start()
    run.ok("a")
    run.ok("b")
    plan = undo_plan(run.state, run.steps)
    assert plan == UndoPlan(order=("b", "a"), in_flight=("c",))
    decision = run.send(CancelRequested("now"))  # c is in flight: compensation waits for it
    decision = run.ok("c")
    assert undo_all(run, decision) == ["c", *plan.order]  # in flight first, then the plan


def test_the_plan_follows_completion_order_in_a_parallel_group() -> None:
    run = Run(GROUPED)
    run.start()
    run.ok("a")
    run.ok("d")
    run.ok("b")
    plan = undo_plan(run.state, run.steps)
    assert plan.order == ("b", "d", "a")
    assert plan.in_flight == ("c",)
    run.fail("c", retryable=False)
    assert run.state.status is SagaStatus.COMPENSATING


def test_nothing_is_undone_past_the_pivot_or_once_settled() -> None:
    run = Run(PIVOTED)
    run.start()
    for name in ("a", "b", "p"):
        run.ok(name)
    assert undo_plan(run.state, run.steps).order == ()
    assert "pivot" in (undo_plan(run.state, run.steps).blocked or "")
    run.ok("r")
    run.ok("s")
    assert run.state.status is SagaStatus.COMPLETED
    assert undo_plan(run.state, run.steps).blocked == "the saga is completed"
