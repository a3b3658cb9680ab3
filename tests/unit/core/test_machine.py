"""The saga state machine: specific transitions, then properties over random runs."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from sagakit.core.codec import head_from, head_row, step_from, step_row
from sagakit.core.definition import Parallel, RetryPolicy, Saga, Step, StepKind
from sagakit.core.errors import InvalidTransition
from sagakit.core.events import (
    CancelRequested,
    CompensationFailed,
    CompensationResolved,
    CompensationSucceeded,
    DeadlineExceeded,
    Decision,
    Event,
    RetryRequested,
    RunTask,
    SagaStarted,
    StepFailed,
    StepSucceeded,
    StepTimedOut,
)
from sagakit.core.ledger import Ledger, replay
from sagakit.core.machine import ALLOWED, decide, needs
from sagakit.core.state import SagaState, SagaStatus, StepState, StepStatus
from tests.support.shapes import Shape, shapes

RETRY = RetryPolicy(
    max_attempts=3,
    initial_interval=1.0,
    backoff=2.0,
    max_interval=60.0,
    jitter=0.0,
    non_retryable=("ValueError",),
)
UNDO = RetryPolicy(max_attempts=2, initial_interval=0.5, backoff=2.0, jitter=0.0)


def comp(name: str, **options: Any) -> Step:
    options.setdefault("retry", RETRY)
    options.setdefault("compensation_retry", UNDO)
    return Step(
        name,
        action=f"svc.{name}",
        compensation=f"svc.undo_{name}",
        queue="q",
        timeout=30.0,
        **options,
    )


def pivot(name: str = "p", **options: Any) -> Step:
    options.setdefault("retry", RETRY)
    return Step(name, action=f"svc.{name}", kind=StepKind.PIVOT, queue="q", **options)


def retriable(name: str = "r", **options: Any) -> Step:
    options.setdefault("retry", RETRY)
    return Step(name, action=f"svc.{name}", kind=StepKind.RETRIABLE, queue="q", **options)


def assert_round_trips(state: SagaState, steps: Any = ()) -> None:
    ids = {"saga_id": state.saga_id, "saga_type": state.saga_type}
    row = {**ids, "definition_version": state.definition_version, **head_row(state)}
    assert head_from(row) == state
    assert head_from(json.loads(json.dumps(row))) == state
    for instance in steps:
        assert step_from(json.loads(json.dumps(step_row(instance)))) == instance


def apply(saga: Saga, ledger: Ledger, event: Event) -> Decision:
    """Decide `event` on exactly what the saga log would load, checking the decision."""
    before = ledger.state
    decision = decide(saga, before, ledger.load(needs(event)), event)
    assert_round_trips(decision.state, decision.steps)
    if decision.ignored:
        assert decision.state == before
        assert decision.commands == decision.steps == ()
        return decision
    assert type(event) in ALLOWED[before.status], f"{type(event).__name__} in {before.status}"
    assert {c.step for c in decision.commands} <= {s.name for s in decision.steps}
    assert not {s.name for s in decision.created} & set(ledger.steps)
    ledger.apply(decision)
    busy = sum(s.busy for s in ledger.steps.values())
    assert ledger.state.busy == busy, "busy count drifted"
    if ledger.state.status is SagaStatus.RUNNING:
        current = [s for s in ledger.steps.values() if s.stage == ledger.state.stage]
        waiting = sum(s.status is not StepStatus.SUCCEEDED for s in current)
        assert ledger.state.open == waiting, "open count drifted"
    return decision


class Run:
    """Feeds events to `decide` for one saga, checking each state survives the codec."""

    def __init__(self, saga: Saga, input: dict[str, Any] | None = None) -> None:
        self.saga = saga
        self.input = input or {}
        self.ledger = Ledger(SagaState("s-1", saga.name, saga.version))
        self.history: list[SagaState] = [self.state]
        self.accepted: list[Event] = []

    @property
    def state(self) -> SagaState:
        return self.ledger.state

    @property
    def steps(self) -> list[StepState]:
        return list(self.ledger.steps.values())

    def find(self, name: str) -> StepState | None:
        return self.ledger.find(name)

    def send(self, event: Event) -> Decision:
        decision = apply(self.saga, self.ledger, event)
        self.history.append(self.state)
        if not decision.ignored:
            self.accepted.append(event)
        return decision

    def start(self) -> Decision:
        return self.send(SagaStarted(self.input))

    def ok(self, step: str, attempt: int = 1, output: Any = None) -> Decision:
        return self.send(StepSucceeded(step, attempt, output))

    def fail(
        self,
        step: str,
        attempt: int = 1,
        *,
        retryable: bool = True,
        error_type: str = "RuntimeError",
    ) -> Decision:
        return self.send(StepFailed(step, attempt, f"{step} broke", retryable, error_type))

    def undone(self, step: str, attempt: int = 1) -> Decision:
        return self.send(CompensationSucceeded(step, attempt))

    def status(self, name: str) -> StepStatus:
        found = self.find(name)
        assert found is not None
        return found.status


def sent(decision: Decision) -> list[tuple[str, str, int]]:
    return [(c.step, c.direction, c.attempt) for c in decision.commands]


def undo_all(run: Run, decision: Decision) -> list[str]:
    """Acknowledge compensations one by one; return the order they were asked for."""
    order: list[str] = []
    while decision.commands:
        (command,) = decision.commands
        assert command.direction == "compensation"
        order.append(command.step)
        decision = run.undone(command.step, command.attempt)
    return order


LINEAR = Saga("linear", [comp("a"), comp("b"), comp("c"), comp("d")])
GROUPED = Saga("grouped", [comp("a"), Parallel("g", [comp("b"), comp("c"), comp("d")]), comp("e")])
PIVOTED = Saga("pivoted", [comp("a"), comp("b"), pivot(), retriable("r"), retriable("s")])
MAPPED = Saga("mapped", [comp("a"), comp("each", for_each="input.items"), comp("z")])


# --- forward progress -----------------------------------------------------------------------


def test_start_dispatches_the_first_stage() -> None:
    run = Run(LINEAR, {"x": 1})
    decision = run.start()
    assert decision.commands == (RunTask("a", "action", 1, "svc.a", "q", 1, 0.0, 30.0, None),)
    assert run.state.status is SagaStatus.RUNNING
    assert run.state.stage == 0
    assert run.status("a") is StepStatus.RUNNING
    assert run.start().ignored


def test_parallel_stage_dispatches_every_branch_and_waits_for_all() -> None:
    run = Run(GROUPED)
    run.start()
    decision = run.ok("a", output={"n": 1})
    assert sent(decision) == [("b", "action", 1), ("c", "action", 1), ("d", "action", 1)]
    assert [c.position for c in decision.commands] == [2, 3, 4]
    assert run.ok("c").commands == ()
    assert run.ok("b").commands == ()
    assert run.state.stage == 1
    assert sent(run.ok("d")) == [("e", "action", 1)]
    assert run.ok("e").commands == ()
    assert run.state.status is SagaStatus.COMPLETED
    assert run.find("a").status is StepStatus.SUCCEEDED
    assert run.state.sources == {}


@pytest.mark.parametrize("failing", range(4))
def test_failure_compensates_exactly_the_earlier_steps_in_reverse(failing: int) -> None:
    names = ["a", "b", "c", "d"]
    run = Run(LINEAR)
    run.start()
    for name in names[:failing]:
        run.ok(name)
    decision = run.fail(names[failing], retryable=False)
    assert run.state.failed_step == names[failing]
    assert names[failing] in (run.state.reason or "")
    assert undo_all(run, decision) == list(reversed(names[:failing]))
    assert run.state.status is SagaStatus.COMPENSATED
    assert run.status(names[failing]) is StepStatus.FAILED
    assert all(run.status(n) is StepStatus.COMPENSATED for n in names[:failing])
    assert all(run.find(n) is None for n in names[failing + 1 :])


def test_transient_failure_is_retried_with_growing_delay_until_the_budget_is_spent() -> None:
    run = Run(LINEAR)
    run.start()
    run.ok("a")
    first = run.fail("b", 1)
    assert sent(first) == [("b", "action", 2)]
    second = run.fail("b", 2)
    assert sent(second) == [("b", "action", 3)]
    assert 0 < first.commands[0].delay < second.commands[0].delay
    assert (first.commands[0].delay, second.commands[0].delay) == (1.0, 2.0)
    assert run.state.status is SagaStatus.RUNNING
    exhausted = run.fail("b", 3)
    assert sent(exhausted) == [("a", "compensation", 1)]
    assert run.state.status is SagaStatus.COMPENSATING


def test_retry_succeeds_on_a_later_attempt() -> None:
    run = Run(LINEAR)
    run.start()
    run.fail("a", 1)
    assert sent(run.ok("a", 2)) == [("b", "action", 1)]
    assert run.find("a").attempt == 2


def test_default_jitter_keeps_the_retry_delay_positive() -> None:
    saga = Saga("jit", [comp("a", retry=RetryPolicy(max_attempts=3, initial_interval=1.0))])
    run = Run(saga)
    run.start()
    (command,) = run.fail("a").commands
    assert 0.8 <= command.delay <= 1.2


@pytest.mark.parametrize(
    ("retryable", "error_type"),
    [
        (False, "RuntimeError"),  # NonRetryableError raised by the step
        (True, "ValueError"),  # listed in retry.non_retryable
        (False, "ValueError"),
    ],
)
def test_non_retryable_errors_skip_the_remaining_attempts(retryable: bool, error_type: str) -> None:
    run = Run(LINEAR)
    run.start()
    run.ok("a")
    decision = run.fail("b", retryable=retryable, error_type=error_type)
    assert sent(decision) == [("a", "compensation", 1)]
    assert run.find("b").attempt == 1


def test_error_type_not_listed_is_retried() -> None:
    run = Run(LINEAR)
    run.start()
    assert sent(run.fail("a", error_type="KeyError")) == [("a", "action", 2)]


# --- stale and duplicate outcomes ---------------------------------------------------------


def _after_retry() -> Run:
    run = Run(LINEAR)
    run.start()
    run.ok("a")
    run.fail("b", 1)  # attempt 2 is now the current one
    return run


@pytest.mark.parametrize(
    "event",
    [
        StepSucceeded("b", 1),  # late result of the superseded attempt
        StepFailed("b", 1, "late", False),
        StepTimedOut("b", 1),
        StepSucceeded("b", 3),  # an attempt that was never sent
        StepSucceeded("a", 1),  # duplicate of an accepted outcome
        StepFailed("a", 1, "dup"),
        StepSucceeded("nope", 1),  # not a step of this saga
        StepSucceeded("c", 1),  # a step not reached yet
        CompensationSucceeded("a", 1),  # nothing is being compensated
        CompensationFailed("b", 2, "x"),
    ],
    ids=repr,
)
def test_stale_or_duplicate_outcome_is_ignored(event: Event) -> None:
    run = _after_retry()
    before = run.state
    decision = run.send(event)
    assert decision.ignored
    assert decision.state == before
    assert decision.commands == ()


def test_duplicate_compensation_outcome_is_ignored() -> None:
    run = Run(LINEAR)
    run.start()
    run.ok("a")
    run.ok("b")
    run.fail("c", retryable=False)
    assert sent(run.undone("b")) == [("a", "compensation", 1)]
    before = run.state
    assert run.undone("b").ignored
    assert run.send(CompensationFailed("b", 1, "late")).ignored
    assert run.state == before
    run.send(CompensationFailed("a", 1, "boom"))
    assert run.undone("a", 1).ignored  # superseded compensation attempt
    assert run.undone("a", 2).commands == ()
    assert run.state.status is SagaStatus.COMPENSATED


# --- parallel failures and timeouts -------------------------------------------------------


def test_failing_branch_waits_for_siblings_then_undoes_them_in_reverse_completion() -> None:
    run = Run(GROUPED)
    run.start()
    run.ok("a")
    run.ok("d")
    assert run.fail("c", retryable=False).commands == ()
    assert run.state.status is SagaStatus.COMPENSATING
    assert run.state.failed_step == "c"
    assert run.send(CancelRequested("again")).ignored
    decision = run.ok("b")  # the last sibling completes after d
    assert undo_all(run, decision) == ["b", "d", "a"]
    assert run.state.status is SagaStatus.COMPENSATED
    assert run.find("e") is None


def test_sibling_failing_while_compensation_waits_is_not_retried() -> None:
    run = Run(GROUPED)
    run.start()
    run.ok("a")
    run.fail("b", retryable=False)
    assert run.fail("c", 1).commands == ()  # retryable, but the saga is already rolling back
    assert run.status("c") is StepStatus.FAILED
    decision = run.ok("d")
    assert undo_all(run, decision) == ["d", "a"]


@pytest.mark.parametrize("final", ["timeout", "non_retryable"])
def test_timed_out_step_is_compensated_even_though_it_failed(final: str) -> None:
    saga = Saga("t", [comp("a"), comp("b", retry=RETRY), comp("c")])
    run = Run(saga)
    run.start()
    run.ok("a")
    assert sent(run.send(StepTimedOut("b", 1))) == [("b", "action", 2)]
    assert run.find("b").maybe_effect
    run.fail("b", 2)
    if final == "timeout":
        decision = run.send(StepTimedOut("b", 3))
    else:
        decision = run.fail("b", 3, retryable=False)
    assert run.status("b") is StepStatus.COMPENSATING  # failed, yet being undone
    assert run.state.failed_step == "b"
    assert undo_all(run, decision) == ["b", "a"]
    assert run.state.status is SagaStatus.COMPENSATED


def test_late_success_of_a_timed_out_attempt_is_ignored_but_the_step_is_undone() -> None:
    run = Run(Saga("t", [comp("a"), comp("b", retry=RetryPolicy(max_attempts=1))]))
    run.start()
    run.ok("a")
    decision = run.send(StepTimedOut("b", 1))
    assert sent(decision) == [("b", "compensation", 1)]
    assert run.ok("b", 1).ignored
    assert undo_all(run, decision) == ["b", "a"]


def test_sibling_timing_out_while_compensation_waits_is_compensated() -> None:
    run = Run(GROUPED)
    run.start()
    run.ok("a")
    run.ok("b")
    run.fail("c", retryable=False)
    decision = run.send(StepTimedOut("d", 1))
    assert undo_all(run, decision) == ["d", "b", "a"]


def test_failure_before_anything_took_effect_compensates_nothing() -> None:
    run = Run(LINEAR)
    run.start()
    decision = run.fail("a", retryable=False)
    assert decision.commands == ()
    assert run.state.status is SagaStatus.COMPENSATED


# --- compensation failures and operator retry ---------------------------------------------


def _stuck_compensation() -> Run:
    run = Run(LINEAR)
    run.start()
    run.ok("a")
    run.ok("b")
    run.ok("c")
    assert sent(run.fail("d", retryable=False)) == [("c", "compensation", 1)]
    assert sent(run.undone("c")) == [("b", "compensation", 1)]
    again = run.send(CompensationFailed("b", 1, "db down"))
    assert sent(again) == [("b", "compensation", 2)]
    assert again.commands[0].delay > 0
    assert run.state.status is SagaStatus.COMPENSATING
    final = run.send(CompensationFailed("b", 2, "db still down"))
    assert final.commands == ()
    return run


def test_compensation_failure_is_retried_then_fails_the_saga() -> None:
    run = _stuck_compensation()
    assert run.state.status is SagaStatus.FAILED
    assert run.state.failed_step == "b"
    assert "db still down" in (run.state.reason or "")
    assert run.status("b") is StepStatus.COMPENSATION_FAILED
    assert run.status("a") is StepStatus.SUCCEEDED


def test_retry_requested_resumes_the_failed_compensation() -> None:
    run = _stuck_compensation()
    decision = run.send(RetryRequested())
    assert sent(decision) == [("b", "compensation", 3)]
    assert run.state.status is SagaStatus.COMPENSATING
    # The operator's retry comes with a fresh budget.
    assert sent(run.send(CompensationFailed("b", 3, "flaky"))) == [("b", "compensation", 4)]
    assert run.undone("b", 3).ignored
    assert undo_all(run, run.undone("b", 4)) == ["a"]
    assert run.state.status is SagaStatus.COMPENSATED


def test_resolving_the_failed_compensation_goes_on_undoing_the_rest() -> None:
    run = _stuck_compensation()
    decision = run.send(CompensationResolved("b", "released by hand in the vendor console", "ops"))
    assert sent(decision) == [("a", "compensation", 1)]
    assert run.status("b") is StepStatus.COMPENSATED
    assert run.find("b").error is None  # type: ignore[union-attr]
    assert run.state.status is SagaStatus.COMPENSATING
    assert run.state.reason == "step 'd' failed: d broke"  # why it compensates, as before
    assert undo_all(run, run.undone("a")) == []
    assert run.state.status is SagaStatus.COMPENSATED
    replayed = replay(LINEAR, SagaState("s-1", "linear", LINEAR.version), run.accepted)
    assert replayed == run.ledger


def test_resolving_the_last_failed_compensation_ends_the_saga_compensated() -> None:
    run = Run(LINEAR)
    run.start()
    run.ok("a")
    assert sent(run.fail("b", retryable=False)) == [("a", "compensation", 1)]
    run.send(CompensationFailed("a", 1, "gone"))
    run.send(CompensationFailed("a", 2, "gone for good"))
    assert run.state.status is SagaStatus.FAILED
    decision = run.send(CompensationResolved("a", "the remote system is gone", "ops"))
    assert decision.commands == ()
    assert run.state.status is SagaStatus.COMPENSATED
    assert run.state.failed_step == "b"


def test_resolving_a_parallel_branch_goes_on_with_what_came_before_the_group() -> None:
    run = Run(Saga("par", [comp("a"), Parallel("g", [comp("x"), comp("y")])]))
    run.start()
    run.ok("a")
    run.fail("x", retryable=False)  # y is still running: compensation waits for it
    run.ok("y")
    assert run.state.status is SagaStatus.COMPENSATING
    run.send(CompensationFailed("y", 1, "gone"))
    run.send(CompensationFailed("y", 2, "gone"))
    assert run.state.status is SagaStatus.FAILED
    assert sent(run.send(CompensationResolved("y", "undone by hand", "ops"))) == [
        ("a", "compensation", 1)
    ]


@pytest.mark.parametrize("step", ["a", "c", "nowhere"])
def test_resolving_a_step_without_a_failed_compensation_is_refused(step: str) -> None:
    run = _stuck_compensation()
    before = run.state
    event = CompensationResolved(step, "by hand", "ops")
    with pytest.raises(InvalidTransition, match=f"step '{step}' has no failed compensation"):
        decide(run.saga, before, run.ledger.load(needs(event)), event)
    assert run.state == before


def _states() -> dict[str, Run]:
    runs: dict[str, Run] = {}
    runs["pending"] = Run(LINEAR)
    runs["running"] = Run(LINEAR)
    runs["running"].start()
    runs["compensating"] = Run(LINEAR)
    runs["compensating"].start()
    runs["compensating"].ok("a")
    runs["compensating"].fail("b", retryable=False)
    runs["completed"] = Run(Saga("one", [comp("a")]))
    runs["completed"].start()
    runs["completed"].ok("a")
    runs["compensated"] = Run(LINEAR)
    runs["compensated"].start()
    runs["compensated"].fail("a", retryable=False)
    runs["failed"] = _stuck_compensation()
    runs["past_pivot"] = Run(PIVOTED)
    runs["past_pivot"].start()
    for name in "abp":
        runs["past_pivot"].ok(name)
    for name, run in runs.items():
        assert run.state.status == name.replace("past_pivot", "running")
    return runs


@pytest.mark.parametrize(
    "status", ["pending", "running", "compensating", "completed", "compensated", "past_pivot"]
)
def test_resolve_outside_failed_is_refused(status: str) -> None:
    run = _states()[status]
    before = run.state
    event = CompensationResolved("a", "by hand", "ops")
    with pytest.raises(InvalidTransition, match="only a failed saga") as raised:
        decide(run.saga, before, run.ledger.load(needs(event)), event)
    assert raised.value.operation == "resolve"
    assert run.state == before


@pytest.mark.parametrize(
    "status", ["pending", "running", "compensating", "completed", "compensated", "past_pivot"]
)
def test_retry_requested_outside_failed_is_refused(status: str) -> None:
    run = _states()[status]
    before = run.state
    with pytest.raises(InvalidTransition, match="only a failed saga") as raised:
        decide(run.saga, before, run.ledger.load(needs(RetryRequested())), RetryRequested())
    assert raised.value.operation == "retry"
    assert raised.value.status == before.status
    assert run.state == before


@pytest.mark.parametrize(
    ("status", "why"),
    [
        ("completed", "already finished"),
        ("compensated", "already finished"),
        ("failed", "already finished"),
        ("past_pivot", "passed its pivot"),
    ],
)
def test_cancel_requested_in_a_settled_or_committed_saga_is_refused(status: str, why: str) -> None:
    run = _states()[status]
    before = run.state
    cancel = CancelRequested("user")
    with pytest.raises(InvalidTransition, match=why) as raised:
        decide(run.saga, before, run.ledger.load(needs(cancel)), cancel)
    assert raised.value.operation == "cancel"
    assert run.state == before


def test_cancel_of_a_pending_saga_compensates_nothing() -> None:
    run = Run(LINEAR)
    assert run.send(CancelRequested("changed my mind")).commands == ()
    assert run.state.status is SagaStatus.COMPENSATED
    assert run.state.reason == "cancelled: changed my mind"
    assert run.start().ignored


def test_cancel_while_a_step_is_in_flight_waits_then_compensates() -> None:
    run = Run(LINEAR)
    run.start()
    run.ok("a")
    decision = run.send(CancelRequested("user"))
    assert decision.commands == ()
    assert run.state.status is SagaStatus.COMPENSATING
    assert run.state.failed_step is None
    assert run.state.reason == "cancelled: user"
    assert run.send(CancelRequested("twice")).ignored
    assert undo_all(run, run.ok("b")) == ["b", "a"]
    assert run.state.status is SagaStatus.COMPENSATED
    assert run.find("c") is None


def test_cancel_while_a_step_is_in_flight_does_not_retry_its_failure() -> None:
    run = Run(LINEAR)
    run.start()
    run.ok("a")
    run.send(CancelRequested("user"))
    decision = run.fail("b", 1)  # retryable, but the saga is being cancelled
    assert run.status("b") is StepStatus.FAILED
    assert undo_all(run, decision) == ["a"]
    assert run.ok("b", 2).ignored


# --- pivot and retriable steps ------------------------------------------------------------


def test_cancel_after_the_pivot_is_refused() -> None:
    run = Run(PIVOTED)
    run.start()
    run.ok("a")
    run.ok("b")
    run.ok("p")
    assert run.state.pivot_passed
    with pytest.raises(InvalidTransition, match="pivot"):
        run.send(CancelRequested("too late"))
    assert run.send(DeadlineExceeded()).ignored


@pytest.mark.parametrize("stop", [CancelRequested("user"), DeadlineExceeded()], ids=repr)
def test_pivot_succeeding_after_a_stop_request_runs_the_saga_to_completion(stop: Event) -> None:
    run = Run(PIVOTED)
    run.start()
    run.ok("a")
    run.ok("b")
    assert run.send(stop).commands == ()  # the pivot is in flight: wait for it
    assert run.state.status is SagaStatus.COMPENSATING
    decision = run.ok("p")
    # The pivot took effect, so nothing may be undone any more: go forward.
    assert sent(decision) == [("r", "action", 1)]
    assert run.state.status is SagaStatus.RUNNING
    run.ok("r")
    run.ok("s")
    assert run.state.status is SagaStatus.COMPLETED
    assert all(run.status(n) is StepStatus.SUCCEEDED for n in "abprs")


@pytest.mark.parametrize("stop", [CancelRequested("user"), DeadlineExceeded()], ids=repr)
def test_pivot_failing_after_a_stop_request_compensates(stop: Event) -> None:
    run = Run(PIVOTED)
    run.start()
    run.ok("a")
    run.ok("b")
    run.send(stop)
    decision = run.fail("p", 1)  # retryable, but the saga is stopping
    assert undo_all(run, decision) == ["b", "a"]
    assert run.state.status is SagaStatus.COMPENSATED


def test_pivot_failure_compensates_the_steps_before_it() -> None:
    run = Run(PIVOTED)
    run.start()
    run.ok("a")
    run.ok("b")
    run.fail("p", 1)
    run.send(StepTimedOut("p", 2))
    decision = run.fail("p", 3, retryable=False)
    assert undo_all(run, decision) == ["b", "a"]
    assert run.state.status is SagaStatus.COMPENSATED


@pytest.mark.parametrize("failures", [1, 50, 1_100])
def test_retriable_step_is_retried_until_it_succeeds(failures: int) -> None:
    run = Run(PIVOTED)
    run.start()
    for name in "abp":
        run.ok(name)
    for attempt in range(1, failures + 1):
        event: Event = (
            StepTimedOut("r", attempt) if attempt % 3 == 0 else StepFailed("r", attempt, "flaky")
        )
        decision = run.send(event)
        assert sent(decision) == [("r", "action", attempt + 1)]
        assert 0 < decision.commands[0].delay <= 60.0
        assert run.state.status is SagaStatus.RUNNING
    assert sent(run.ok("r", failures + 1)) == [("s", "action", 1)]
    run.ok("s")
    assert run.state.status is SagaStatus.COMPLETED


def test_non_retryable_failure_after_the_pivot_needs_an_operator() -> None:
    run = Run(PIVOTED)
    run.start()
    for name in "abp":
        run.ok(name)
    run.fail("r", 1)
    decision = run.fail("r", 2, retryable=False)
    assert decision.commands == ()
    assert run.state.status is SagaStatus.FAILED
    assert run.state.failed_step == "r"
    assert run.send(DeadlineExceeded()).ignored
    with pytest.raises(InvalidTransition):
        run.send(CancelRequested("no"))
    assert sent(run.send(RetryRequested())) == [("r", "action", 3)]
    assert run.state.status is SagaStatus.RUNNING
    assert run.state.failed_step is None
    assert sent(run.ok("r", 3)) == [("s", "action", 1)]
    run.ok("s")
    assert run.state.status is SagaStatus.COMPLETED


def test_parallel_retriables_after_the_pivot_wait_for_in_flight_siblings() -> None:
    saga = Saga(
        "pr",
        [comp("a"), pivot(), Parallel("g", [retriable("r1"), retriable("r2")]), retriable("z")],
    )
    run = Run(saga)
    run.start()
    run.ok("a")
    run.ok("p")
    run.fail("r1", retryable=False)
    assert run.state.status is SagaStatus.FAILED
    assert run.fail("r2", 1).commands == ()  # no retry while the saga awaits its operator
    assert sent(run.send(RetryRequested())) == [("r1", "action", 2), ("r2", "action", 2)]
    run.ok("r1", 2)
    assert sent(run.ok("r2", 2)) == [("z", "action", 1)]


def test_retry_requested_while_a_sibling_is_in_flight() -> None:
    saga = Saga(
        "pr",
        [comp("a"), pivot(), Parallel("g", [retriable("r1"), retriable("r2")]), retriable("z")],
    )
    run = Run(saga)
    run.start()
    run.ok("a")
    run.ok("p")
    run.fail("r1", retryable=False)
    assert sent(run.send(RetryRequested())) == [("r1", "action", 2)]
    assert run.ok("r2").commands == ()
    assert sent(run.ok("r1", 2)) == [("z", "action", 1)]


def test_nothing_after_the_pivot_is_ever_compensated() -> None:
    run = Run(PIVOTED)
    every: list[RunTask] = list(run.start().commands)
    for name in "abprs":
        decision = run.ok(name)
        every.extend(decision.commands)
    assert run.state.status is SagaStatus.COMPLETED
    assert all(c.direction == "action" for c in every)


# --- for_each fan-out ---------------------------------------------------------------------


def test_for_each_creates_one_instance_per_item() -> None:
    run = Run(MAPPED, {"items": ["x", {"y": 2}, 3]})
    run.start()
    decision = run.ok("a")
    assert sent(decision) == [
        ("each[0]", "action", 1),
        ("each[1]", "action", 1),
        ("each[2]", "action", 1),
    ]
    assert [c.item for c in decision.commands] == ["x", {"y": 2}, 3]
    assert {c.position for c in decision.commands} == {2}
    assert [run.find(f"each[{i}]").index for i in range(3)] == [0, 1, 2]
    assert run.ok("each[2]").commands == ()
    assert run.ok("each[0]").commands == ()
    assert sent(run.ok("each[1]")) == [("z", "action", 1)]


def test_for_each_instance_failure_undoes_completed_instances() -> None:
    run = Run(MAPPED, {"items": [1, 2, 3]})
    run.start()
    run.ok("a")
    run.ok("each[1]")
    run.fail("each[0]", retryable=False)
    decision = run.ok("each[2]")
    assert undo_all(run, decision) == ["each[2]", "each[1]", "a"]
    assert [c.item for c in decision.commands] == [3]


def test_for_each_over_an_empty_list_skips_the_stage() -> None:
    run = Run(MAPPED, {"items": []})
    run.start()
    assert sent(run.ok("a")) == [("z", "action", 1)]
    assert not any(s.step == "each" for s in run.steps)
    run.ok("z")
    assert run.state.status is SagaStatus.COMPLETED


def test_for_each_over_an_earlier_output() -> None:
    saga = Saga("m", [comp("a"), comp("b", for_each="a.robots")])
    run = Run(saga)
    run.start()
    assert sent(run.ok("a", output={"robots": ["r1", "r2"]})) == [
        ("b[0]", "action", 1),
        ("b[1]", "action", 1),
    ]


@pytest.mark.parametrize("data", [{}, {"items": "abc"}, {"items": None}])
def test_for_each_that_does_not_resolve_compensates_before_the_pivot(data: dict[str, Any]) -> None:
    run = Run(MAPPED, data)
    run.start()
    decision = run.ok("a")
    assert run.state.failed_step == "each"
    assert "did not resolve to a list" in (run.state.reason or "")
    assert undo_all(run, decision) == ["a"]
    assert run.state.status is SagaStatus.COMPENSATED


def test_for_each_that_does_not_resolve_after_the_pivot_needs_an_operator() -> None:
    saga = Saga("m", [comp("a"), pivot(), retriable("r", for_each="p.targets")])
    run = Run(saga)
    run.start()
    run.ok("a")
    decision = run.ok("p", output={"no": "targets"})
    assert decision.commands == ()
    assert run.state.status is SagaStatus.FAILED
    assert run.state.failed_step == "r"
    assert run.status("a") is StepStatus.SUCCEEDED
    assert run.send(RetryRequested()).commands == ()
    assert run.state.status is SagaStatus.FAILED


# --- deadline -----------------------------------------------------------------------------


def test_deadline_before_the_pivot_compensates() -> None:
    run = Run(PIVOTED)
    run.start()
    run.ok("a")
    assert run.send(DeadlineExceeded()).commands == ()
    assert run.state.reason == "deadline exceeded"
    assert undo_all(run, run.ok("b")) == ["b", "a"]
    assert run.state.status is SagaStatus.COMPENSATED
    assert run.send(DeadlineExceeded()).ignored


def test_deadline_of_a_pending_saga_compensates_nothing() -> None:
    run = Run(LINEAR)
    run.send(DeadlineExceeded())
    assert run.state.status is SagaStatus.COMPENSATED


def test_deadline_after_the_pivot_is_ignored() -> None:
    run = Run(PIVOTED)
    run.start()
    for name in "abp":
        run.ok(name)
    assert run.send(DeadlineExceeded()).ignored
    assert run.state.status is SagaStatus.RUNNING


def test_deadline_while_compensating_is_ignored() -> None:
    run = _states()["compensating"]
    assert run.send(DeadlineExceeded()).ignored


def test_states_reached_here_round_trip_through_the_codec() -> None:
    runs = _states()
    states = [state for run in runs.values() for state in run.history]
    mapped = Run(MAPPED, {"items": [{"k": [1, 2]}, "v"]})
    mapped.start()
    mapped.ok("a", output={"nested": {"list": [1, 2.5, None, "x"]}})
    mapped.send(StepTimedOut("each[0]", 1))
    states.extend(mapped.history)
    assert len(states) > 20
    for state in states:
        assert_round_trips(state)


# === properties over random definitions and random deliveries ==============================

FORCE_SUCCESS_AFTER = 200
"""Deliveries after which every outcome is a success, so that every run ends."""


ACTION_OUTCOMES = ["success", "transient", "non_retryable", "listed_type", "timeout"]


@dataclass
class Driver:
    """Delivers random outcomes for outstanding commands and checks every decision."""

    shape: Shape
    data: st.DataObject
    state: SagaState = field(init=False)
    outstanding: dict[tuple[str, str], RunTask] = field(default_factory=dict)
    delivered: list[tuple[RunTask, Event]] = field(default_factory=list)
    last_attempt: dict[tuple[str, str], int] = field(default_factory=dict)
    attempt_base: dict[str, int] = field(default_factory=dict)
    instances: dict[int, set[str]] = field(default_factory=dict)
    succeeded: set[str] = field(default_factory=set)
    timed_out: set[str] = field(default_factory=set)
    effect_order: list[str] = field(default_factory=list)
    compensations_sent: list[str] = field(default_factory=list)
    compensated: list[str] = field(default_factory=list)
    pivot_done: bool = False
    retriable_started: bool = False
    retries_left: int = 3
    deliveries: int = 0
    fault_rate: int = 0
    cancels: int = 0
    deadlines: int = 0
    retries: int = 0
    resolves: int = 0
    redeliveries: int = 0
    accepted: list[Event] = field(default_factory=list)

    def __post_init__(self) -> None:
        saga = self.shape.saga
        self.ledger = Ledger(SagaState("prop-1", saga.name, saga.version))
        self.state = self.ledger.state

    @property
    def saga(self) -> Saga:
        return self.shape.saga

    @property
    def committed(self) -> bool:
        """The driver's own view of whether the saga passed its point of no return."""
        return self.pivot_done or self.retriable_started

    # -- applying events --

    def apply(self, event: Event, note: Callable[[Decision], None] | None = None) -> Decision:
        """Apply `event`; `note` records what happened before the new commands are checked."""
        decision = apply(self.saga, self.ledger, event)
        if not decision.ignored:
            self.accepted.append(event)
        if note is not None:
            note(decision)
        for command in decision.commands:
            self.check_command(command)
        self.state = self.ledger.state
        return decision

    def check_command(self, command: RunTask) -> None:
        key = (command.step, command.direction)
        assert not any(k[0] == command.step for k in self.outstanding), (
            f"{command.step} dispatched while an earlier command for it is outstanding"
        )
        assert command.attempt > self.last_attempt.get(key, 0), "attempts must increase"
        first = key not in self.last_attempt
        self.last_attempt[key] = command.attempt
        step = self.saga.step(command.step)
        stage = self.shape.stage_of[step.name]
        if command.direction == "compensation":
            assert step.kind is StepKind.COMPENSATABLE, f"{step.kind} step compensated"
            assert self.shape.pivot_stage is None or stage < self.shape.pivot_stage
            assert not self.committed, "compensation sent after the pivot took effect"
            assert command.step in self.succeeded | self.timed_out, "undo of a step with no effect"
            assert command.step not in self.compensated, "compensated twice"
            if first:
                self.compensations_sent.append(command.step)
        else:
            assert not self.compensations_sent, "action sent after compensation began"
            if first:
                assert command.attempt == 1
                for earlier in range(stage):
                    expected = self.shape.expected_instances(earlier)
                    done = self.instances.get(earlier, set())
                    assert len(done) == expected and done <= self.succeeded, (
                        f"stage {stage} started before stage {earlier} succeeded"
                    )
                self.instances.setdefault(stage, set()).add(command.step)
                if step.kind is StepKind.RETRIABLE:
                    self.retriable_started = True
                self.attempt_base[command.step] = 0
        self.outstanding[key] = command

    # -- outcomes --

    def deliver(self, forced: bool) -> None:
        keys = sorted(self.outstanding)
        key = keys[self.data.draw(st.integers(0, len(keys) - 1), label="which")]
        command = self.outstanding.pop(key)
        self.deliveries += 1
        if command.direction == "compensation":
            ok = forced or not self.faulty()
            event: Event = (
                CompensationSucceeded(command.step, command.attempt)
                if ok
                else CompensationFailed(command.step, command.attempt, "undo broke")
            )
            decision = self.apply(event)
            assert not decision.ignored, f"current outcome ignored: {event}"
            if ok:
                assert command.step not in self.compensated
                self.compensated.append(command.step)
        else:
            outcome = "success"
            if not forced and self.faulty():
                outcome = self.data.draw(st.sampled_from(ACTION_OUTCOMES[1:]), label="fault")
            event = self.action_event(command, outcome)
            self.deliver_action(command, event, outcome)
        self.delivered.append((command, event))

    def faulty(self) -> bool:
        return self.data.draw(st.integers(0, 19), label="roll") < self.fault_rate

    @staticmethod
    def action_event(command: RunTask, outcome: str) -> Event:
        name, attempt = command.step, command.attempt
        return {
            "success": StepSucceeded(name, attempt, {"attempt": attempt}),
            "transient": StepFailed(name, attempt, "flaky", True, "RuntimeError"),
            "non_retryable": StepFailed(name, attempt, "refused", False, "NonRetryableError"),
            "listed_type": StepFailed(name, attempt, "bad value", True, "ValueError"),
            "timeout": StepTimedOut(name, attempt),
        }[outcome]

    def deliver_action(self, command: RunTask, event: Event, outcome: str) -> None:
        name = command.step
        status = self.state.status
        step = self.saga.step(name)

        def note(decision: Decision) -> None:
            assert not decision.ignored, f"current outcome ignored: {event}"
            if outcome == "success":
                self.succeeded.add(name)
                self.effect_order.append(name)
                self.pivot_done |= step.kind is StepKind.PIVOT
                return
            if outcome == "timeout":
                self.timed_out.add(name)
            retried = [c for c in decision.commands if c.step == name and c.direction == "action"]
            retryable = outcome in ("transient", "timeout")
            used = command.attempt - self.attempt_base[name]
            budget = step.effective_retry.max_attempts
            expect_retry = (
                retryable and status is SagaStatus.RUNNING and (budget is None or used < budget)
            )
            assert bool(retried) == expect_retry, f"{name} after {outcome}: retried={retried}"
            if retried:
                assert [(c.direction, c.attempt) for c in retried] == [
                    ("action", command.attempt + 1)
                ]
                assert retried[0].delay > 0
            elif name in self.timed_out:
                self.effect_order.append(name)  # it may have taken effect: it counts as done

        self.apply(event, note)

    def redeliver(self) -> None:
        command, event = self.delivered[
            self.data.draw(st.integers(0, len(self.delivered) - 1), label="old")
        ]
        if command.direction == "action" and self.data.draw(st.booleans(), label="stale"):
            event = self.action_event(
                command, self.data.draw(st.sampled_from(ACTION_OUTCOMES), label="late")
            )
        before = self.state
        decision = self.apply(event)
        assert decision.ignored, f"re-delivered {event} was accepted"
        assert self.state == before
        self.redeliveries += 1

    def cancel(self) -> None:
        status = self.state.status
        try:
            decision = self.apply(CancelRequested("random"))
        except InvalidTransition:
            assert status.settled or self.committed
            return
        assert not status.settled and not self.committed
        if status is SagaStatus.COMPENSATING:
            assert decision.ignored
        else:
            assert self.state.status in (SagaStatus.COMPENSATING, SagaStatus.COMPENSATED)
            self.cancels += 1

    def deadline(self) -> None:
        status = self.state.status
        decision = self.apply(DeadlineExceeded())
        if status in (SagaStatus.PENDING, SagaStatus.RUNNING) and not self.committed:
            assert not decision.ignored
            assert self.state.status in (SagaStatus.COMPENSATING, SagaStatus.COMPENSATED)
            self.deadlines += 1
        else:
            assert decision.ignored

    def retry(self) -> None:
        status = self.state.status
        try:
            decision = self.apply(RetryRequested())
        except InvalidTransition:
            assert status is not SagaStatus.FAILED
            return
        assert status is SagaStatus.FAILED
        self.retries_left -= 1
        self.retries += 1
        for command in decision.commands:
            if command.direction == "action" and command.attempt > 1:
                self.attempt_base[command.step] = command.attempt - 1

    def resolve(self) -> None:
        """An operator records the failed compensation as done by hand."""
        stuck = [
            s.name for s in self.ledger.steps.values() if s.status is StepStatus.COMPENSATION_FAILED
        ]
        names = stuck or sorted(self.ledger.steps) or ["nowhere"]
        name = self.data.draw(st.sampled_from(names), label="resolve")
        status = self.state.status
        self.retries_left -= 1
        try:
            self.apply(CompensationResolved(name, "undone by hand", "op"))
        except InvalidTransition:
            assert not stuck or status is not SagaStatus.FAILED
            return
        assert stuck and status is SagaStatus.FAILED
        self.compensated.append(name)  # in undo order: it was the one being undone
        self.resolves += 1

    # -- the run --

    def run(self) -> None:
        # Per run: how often an outcome is a fault (out of 20) and how often, in percent,
        # an operator or the clock steps in; some runs are calm, some are rough.
        self.fault_rate = self.data.draw(st.sampled_from([0, 2, 5, 10, 16]), label="faults")
        chaos = self.data.draw(st.sampled_from([0, 9, 24]), label="chaos")
        self.apply(SagaStarted(self.shape.input))
        while True:
            forced = self.deliveries >= FORCE_SUCCESS_AFTER
            failed = self.state.status is SagaStatus.FAILED
            if failed and self.retries_left and self.data.draw(st.booleans(), label="op"):
                [self.retry, self.resolve][self.data.draw(st.integers(0, 1), label="how")]()
                continue
            if not self.outstanding:
                break
            choice = 99 if forced else self.data.draw(st.integers(0, 99), label="choice")
            if choice >= 6 + chaos or (choice < 6 and not self.delivered):
                self.deliver(forced)
            elif choice < 6:
                self.redeliver()
            else:
                [self.cancel, self.deadline, self.retry][choice % 3]()

    def check_end(self) -> None:
        state = self.state
        saga = self.saga
        replayed = replay(saga, SagaState("prop-1", saga.name, saga.version), self.accepted)
        assert replayed == self.ledger, "replaying the accepted events gave another state"
        assert state.status.settled, f"run ended in {state.status}"
        if state.status is not SagaStatus.FAILED:
            assert not self.outstanding
        else:
            assert state.failed_step is not None
        undo = [n for n in reversed(self.effect_order) if self.shape.compensatable(n)]
        # Undone in reverse order of completion; a stuck compensation stops the sequence.
        assert self.compensated == undo[: len(self.compensated)]
        assert self.compensations_sent == undo[: len(self.compensations_sent)]
        assert len(set(self.compensated)) == len(self.compensated)
        if state.status is SagaStatus.COMPLETED:
            for stage in range(len(self.saga.steps)):
                done = self.instances.get(stage, set())
                assert len(done) == self.shape.expected_instances(stage)
                assert done <= self.succeeded
            assert self.compensations_sent == []
        if state.status is SagaStatus.COMPENSATED:
            assert not self.committed
            assert set(self.compensated) == set(undo)
            assert self.compensated == undo
            steps = self.ledger.steps.values()
            assert {s.name for s in steps if s.status is StepStatus.COMPENSATED} == set(undo)


@settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(shape=shapes(), data=st.data())
def test_random_runs_settle_and_compensate_exactly_what_took_effect(
    shape: Shape, data: st.DataObject
) -> None:
    driver = Driver(shape, data)
    driver.run()
    driver.check_end()
    event(f"ended {driver.state.status}")
    event(f"pivot {'yes' if shape.pivot_stage is not None else 'no'}, committed {driver.committed}")
    event(f"deliveries {min(driver.deliveries // 10 * 10, FORCE_SUCCESS_AFTER)}+")
    for name in ("cancels", "deadlines", "retries", "resolves", "redeliveries"):
        event(f"{name} accepted: {min(getattr(driver, name), 2)}")


@settings(max_examples=100, deadline=None, database=None)
@given(shape=shapes())
def test_runs_where_everything_succeeds_complete(shape: Shape) -> None:
    ledger = Ledger(SagaState("ok-1", shape.saga.name, 1))
    decision = apply(shape.saga, ledger, SagaStarted(shape.input))
    queue = list(decision.commands)
    actions: list[str] = []
    undone: list[str] = []
    while queue:
        command = queue.pop(0)
        if command.direction == "action":
            actions.append(command.step)
            event: Event = StepSucceeded(command.step, 1)
        else:
            undone.append(command.step)
            event = CompensationSucceeded(command.step, 1)
        decision = apply(shape.saga, ledger, event)
        assert not decision.ignored
        queue.extend(decision.commands)
    final = ledger.state
    steps = list(ledger.steps.values())
    assert len(actions) == len(set(actions)) == len(steps)
    fans_out = [shape.stage_of[s.name] for s in shape.saga.all_steps() if s.for_each]
    if "items" in shape.input or not fans_out:
        assert final.status is SagaStatus.COMPLETED
        assert all(s.status is StepStatus.SUCCEEDED for s in steps)
        assert undone == []
    elif shape.pivot_stage is not None and min(fans_out) > shape.pivot_stage:
        assert final.status is SagaStatus.FAILED  # past the pivot: an operator decides
        assert undone == []
    else:
        assert final.status is SagaStatus.COMPENSATED
        assert undone == actions[::-1]
