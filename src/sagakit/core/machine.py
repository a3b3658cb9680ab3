"""The saga state machine: decide(definition, head, instances, event) -> decision.

Rule: this module performs no I/O, reads no clock, makes no ids and does not log. Callers
feed it events and carry out the decisions it returns; a stale or duplicate outcome (an old
attempt, a redelivered message) is recognised by its attempt number and ignored.

A decision costs the same however large the saga: `needs(event)` names the few step
instances `decide` reads (the one an outcome reports on, and the next one to undo), the
head keeps counters instead of scanning instances (`open`, `busy`), and the decision lists
only the instances it created or changed.

Compensation order lives here and only here: completed steps are undone one at a time, in
reverse order of completion, and only once nothing is in flight (a failing branch of a
parallel group waits for its siblings, then every sibling that completed is compensated).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import assert_never

from .definition import Saga, StepKind
from .errors import InvalidTransition
from .events import (
    CancelRequested,
    CompensationFailed,
    CompensationResolved,
    CompensationSucceeded,
    DeadlineExceeded,
    Decision,
    Direction,
    Event,
    Needs,
    RetryRequested,
    RunTask,
    SagaStarted,
    StepFailed,
    StepSucceeded,
    StepTimedOut,
)
from .state import JSON, SagaState, SagaStatus, StepState, StepStatus

ALLOWED: Mapping[SagaStatus, frozenset[type]] = {
    SagaStatus.PENDING: frozenset({SagaStarted, CancelRequested, DeadlineExceeded}),
    SagaStatus.RUNNING: frozenset(
        {StepSucceeded, StepFailed, StepTimedOut, CancelRequested, DeadlineExceeded}
    ),
    SagaStatus.COMPENSATING: frozenset(
        {StepSucceeded, StepFailed, StepTimedOut, CompensationSucceeded, CompensationFailed}
    ),
    SagaStatus.COMPLETED: frozenset(),
    SagaStatus.COMPENSATED: frozenset(),
    SagaStatus.FAILED: frozenset(
        {StepSucceeded, StepFailed, StepTimedOut, RetryRequested, CompensationResolved}
    ),
}
"""The automaton at a glance: which events can change a saga in each status.

Any other event is ignored (a late or duplicate outcome) or, for an operator's cancel,
retry or resolve, refused with InvalidTransition. A cancel while compensating is ignored; a failed
saga may still hear from an instance that was in flight when it stopped.
"""


def needs(event: Event) -> Needs:
    """The step instances `decide` must be given to apply `event`."""
    match event:
        case SagaStarted():
            return Needs()
        case (
            StepSucceeded()
            | StepFailed()
            | StepTimedOut()
            | CompensationSucceeded()
            | CompensationFailed()
        ):
            return Needs((event.step,), undo_top=True)
        case CancelRequested() | DeadlineExceeded():
            return Needs(undo_top=True)
        case RetryRequested():
            return Needs(undo_top=True, failed=True)
        case CompensationResolved():
            return Needs((event.step,), undo_top=True)
        case _:
            assert_never(event)


def decide(saga: Saga, state: SagaState, steps: Mapping[str, StepState], event: Event) -> Decision:
    """Apply one event to a saga, given the instances `needs(event)` names.

    Raises InvalidTransition, changing nothing, for a cancel, retry or resolve the saga's
    state refuses.
    """
    t = _Transition(saga, state, steps)
    match event:
        case SagaStarted():
            if state.status is not SagaStatus.PENDING:
                return t.ignore()
            t.state = replace(state, status=SagaStatus.RUNNING, sources=_input_sources(saga, event))
            _enter_stage(t, 0)
        case StepSucceeded():
            _step_succeeded(t, event)
        case StepFailed():
            _step_failed(t, event.step, event.attempt, event.error, _retryable(t, event), False)
        case StepTimedOut():
            error = event.reason or f"attempt {event.attempt} timed out"
            _step_failed(t, event.step, event.attempt, error, True, True)
        case CompensationSucceeded():
            _compensation_succeeded(t, event)
        case CompensationFailed():
            _compensation_failed(t, event)
        case CancelRequested():
            _cancel(t, event.reason)
        case DeadlineExceeded():
            _deadline(t)
        case RetryRequested():
            _retry(t)
        case CompensationResolved():
            _resolve(t, event)
        case _:
            assert_never(event)
    return t.decision()


class _Transition:
    """The working copy of one decision: the head, the instances seen, what changed."""

    def __init__(self, saga: Saga, state: SagaState, steps: Mapping[str, StepState]) -> None:
        self.saga = saga
        self.before = state
        self.state = state
        self.view = dict(steps)
        self.loaded = frozenset(steps)
        self.changed: dict[str, StepState] = {}
        self.commands: list[RunTask] = []
        self.ignored = False

    def put(self, new: StepState) -> None:
        """Record a new or changed instance, keeping the head's busy count true."""
        old = self.view.get(new.name)
        delta = int(new.busy) - int(old is not None and old.busy)
        if delta:
            self.state = replace(self.state, busy=self.state.busy + delta)
        self.view[new.name] = new
        self.changed[new.name] = new

    def send(self, st: StepState, direction: Direction, attempt: int, delay: float) -> None:
        """Ask for one attempt of the action or compensation of `st`."""
        step = self.saga.step(st.step)
        task = step.action if direction == "action" else step.compensation
        assert task is not None
        self.commands.append(
            RunTask(
                st.name,
                direction,
                attempt,
                task,
                step.queue_name,
                self.saga.position(st.step),
                delay,
                step.timeout,
                st.item,
            )
        )

    def current(
        self, name: str, status: StepStatus, attempt: int, *, compensation: bool = False
    ) -> StepState | None:
        """The instance `name` if it is in `status` at `attempt`; None for a stale outcome."""
        st = self.view.get(name)
        if st is None or st.status is not status:
            return None
        now = st.compensation_attempt if compensation else st.attempt
        return st if now == attempt else None

    def ignore(self) -> Decision:
        self.ignored = True
        return self.decision()

    def decision(self) -> Decision:
        if self.ignored:
            return Decision(self.before, ignored=True)
        created = tuple(s for n, s in self.changed.items() if n not in self.loaded)
        updated = tuple(s for n, s in self.changed.items() if n in self.loaded)
        return Decision(self.state, created, updated, tuple(self.commands))


def _retryable(t: _Transition, event: StepFailed) -> bool:
    st = t.view.get(event.step)
    listed = t.saga.step(st.step).retry.non_retryable if st is not None else ()
    return event.retryable and event.error_type not in listed


def _input_sources(saga: Saga, event: SagaStarted) -> dict[str, JSON]:
    return {
        path: event.input.get(path.partition(".")[2])
        for path in saga.for_each_paths
        if path.startswith("input.")
    }


def _resolve_items(state: SagaState, path: str) -> list[JSON] | str:
    value = state.sources.get(path)
    if not isinstance(value, list):
        return f"for_each {path!r} did not resolve to a list"
    return value


def _enter_stage(t: _Transition, stage: int) -> None:
    saga = t.saga
    if stage >= len(saga.steps):
        t.state = replace(t.state, status=SagaStatus.COMPLETED, stage=stage, sources={})
        return
    created: list[StepState] = []
    passes_pivot = any(step.kind is StepKind.RETRIABLE for step in saga.stage_steps(stage))
    for step in saga.stage_steps(stage):
        if step.for_each is None:
            created.append(StepState(step.name, step.name, stage))
            continue
        items = _resolve_items(t.state, step.for_each)
        if isinstance(items, str):
            reason = f"step {step.name!r}: {items}"
            if t.state.pivot_passed or passes_pivot:
                # Nothing after the pivot may be undone: stop and wait for an operator.
                t.state = replace(
                    t.state,
                    status=SagaStatus.FAILED,
                    reason=reason,
                    failed_step=step.name,
                    pivot_passed=True,
                )
                return
            _begin_compensation(t, reason, step.name)
            return
        created.extend(
            StepState(f"{step.name}[{i}]", step.name, stage, i, item)
            for i, item in enumerate(items)
        )
    t.state = replace(
        t.state,
        stage=stage,
        open=len(created),
        pivot_passed=t.state.pivot_passed or passes_pivot,
        sources={p: v for p, v in t.state.sources.items() if saga.last_use(p) > stage},
    )
    for st in created:
        t.put(st)
        t.send(st, "action", 1, 0.0)
    if not created:
        _enter_stage(t, stage + 1)


def _step_succeeded(t: _Transition, event: StepSucceeded) -> None:
    st = t.current(event.step, StepStatus.RUNNING, event.attempt)
    if st is None:
        t.ignore()
        return
    step = t.saga.step(st.step)
    seq = t.state.seq + 1
    order = seq if step.compensation is not None else None
    t.put(replace(st, status=StepStatus.SUCCEEDED, order=order, error=None))
    pivot = step.kind is StepKind.PIVOT
    sources = dict(t.state.sources)
    for path in t.saga.for_each_paths:
        source, _, key = path.partition(".")
        if source == st.name:
            sources[path] = event.output.get(key) if isinstance(event.output, Mapping) else None
    t.state = replace(
        t.state,
        seq=seq,
        open=t.state.open - 1,
        pivot_passed=t.state.pivot_passed or pivot,
        sources=sources,
    )
    if t.state.status is SagaStatus.COMPENSATING:
        if not pivot:
            _continue_compensation(t)
            return
        # A cancel or deadline was waiting on the pivot, which went through: there is no
        # way back any more, so the saga runs to completion.
        t.state = replace(t.state, status=SagaStatus.RUNNING, reason=None)
    if t.state.status is SagaStatus.RUNNING and t.state.open == 0:
        _enter_stage(t, t.state.stage + 1)


def _step_failed(
    t: _Transition, name: str, attempt: int, error: str, retryable: bool, timed_out: bool
) -> None:
    st = t.current(name, StepStatus.RUNNING, attempt)
    if st is None:
        t.ignore()
        return
    step = t.saga.step(st.step)
    policy = step.effective_retry
    used = st.attempt - st.attempt_base
    maybe = st.maybe_effect or timed_out
    if retryable and t.state.status is SagaStatus.RUNNING and policy.allows(used):
        delay = policy.delay(used, f"{t.state.saga_id}:{st.name}")
        again = replace(st, attempt=st.attempt + 1, maybe_effect=maybe, error=error)
        t.put(again)
        t.send(again, "action", again.attempt, delay)
        return
    order = None
    if maybe and step.compensation is not None:
        t.state = replace(t.state, seq=t.state.seq + 1)
        order = t.state.seq
    t.put(replace(st, status=StepStatus.FAILED, maybe_effect=maybe, error=error, order=order))
    if t.state.status is SagaStatus.COMPENSATING:
        _continue_compensation(t)
        return
    if t.state.status is not SagaStatus.RUNNING:
        return
    reason = f"step {st.name!r} failed: {error}"
    if t.state.pivot_passed:
        # Nothing after the pivot may be undone: stop and wait for an operator.
        t.state = replace(t.state, status=SagaStatus.FAILED, reason=reason, failed_step=st.name)
        return
    _begin_compensation(t, reason, st.name)


def _begin_compensation(t: _Transition, reason: str, failed_step: str | None) -> None:
    t.state = replace(
        t.state,
        status=SagaStatus.COMPENSATING,
        reason=reason,
        failed_step=failed_step,
        cause=reason,
        cause_step=failed_step,
    )
    _continue_compensation(t)


def _continue_compensation(t: _Transition) -> None:
    if t.state.busy:
        return
    waiting = [s for s in t.view.values() if s.order is not None and _undoable(s)]
    if not waiting:
        t.state = replace(t.state, status=SagaStatus.COMPENSATED)
        return
    last = max(waiting, key=lambda s: s.order or 0)
    undoing = replace(
        last,
        status=StepStatus.COMPENSATING,
        compensation_attempt=last.compensation_attempt + 1,
        order=None,
    )
    t.put(undoing)
    t.send(undoing, "compensation", undoing.compensation_attempt, 0.0)


def _undoable(st: StepState) -> bool:
    return st.status is StepStatus.SUCCEEDED or (st.status is StepStatus.FAILED and st.maybe_effect)


@dataclass(frozen=True, slots=True)
class UndoPlan:
    """What a failure or a cancel at this moment would undo (the dashboard shows it)."""

    order: tuple[str, ...] = ()
    """Instances whose compensation would run, in the order they would run."""
    in_flight: tuple[str, ...] = ()
    """Instances running now: each that succeeds is undone first, before `order`."""
    blocked: str | None = None
    """Why nothing can be undone (the pivot passed, the saga finished), if so."""


def undo_plan(state: SagaState, steps: Iterable[StepState]) -> UndoPlan:
    """The compensations a failure or a cancel now would run, as `decide` would run them.

    Compensation waits for the instances in flight, then undoes, one at a time, every
    instance that took effect (or may have), the latest to take effect first.
    """
    if state.status.settled:
        return UndoPlan(blocked=f"the saga is {state.status.value}")
    if state.pivot_passed:
        return UndoPlan(blocked="it passed its pivot step and will run to completion")
    every = list(steps)
    waiting = sorted(
        (s for s in every if s.order is not None and _undoable(s)),
        key=lambda s: s.order or 0,
        reverse=True,
    )
    in_flight = tuple(s.name for s in every if s.status is StepStatus.RUNNING)
    return UndoPlan(tuple(s.name for s in waiting), in_flight)


def _compensation_succeeded(t: _Transition, event: CompensationSucceeded) -> None:
    st = t.current(event.step, StepStatus.COMPENSATING, event.attempt, compensation=True)
    if st is None:
        t.ignore()
        return
    t.put(replace(st, status=StepStatus.COMPENSATED, error=None))
    _continue_compensation(t)


def _compensation_failed(t: _Transition, event: CompensationFailed) -> None:
    st = t.current(event.step, StepStatus.COMPENSATING, event.attempt, compensation=True)
    if st is None:
        t.ignore()
        return
    policy = t.saga.step(st.step).compensation_retry
    used = st.compensation_attempt - st.compensation_base
    if policy.allows(used):
        delay = policy.delay(used, f"{t.state.saga_id}:{st.name}:undo")
        again = replace(st, compensation_attempt=st.compensation_attempt + 1, error=event.error)
        t.put(again)
        t.send(again, "compensation", again.compensation_attempt, delay)
        return
    t.put(replace(st, status=StepStatus.COMPENSATION_FAILED, error=event.error))
    reason = f"compensation of step {st.name!r} failed after {used} attempts: {event.error}"
    if t.state.cause:
        reason += f" (compensating because {t.state.cause})"
    t.state = replace(t.state, status=SagaStatus.FAILED, reason=reason, failed_step=st.name)


def _cancel(t: _Transition, reason: str) -> None:
    state = t.state
    if state.status is SagaStatus.COMPENSATING:
        t.ignore()
        return
    if state.status.settled:
        raise InvalidTransition(state.saga_id, state.status, "cancel", "it has already finished")
    if state.pivot_passed:
        raise InvalidTransition(
            state.saga_id,
            state.status,
            "cancel",
            "it passed its pivot step and will run to completion",
        )
    _begin_compensation(t, f"cancelled: {reason}", None)


def _deadline(t: _Transition) -> None:
    waiting = t.state.status in (SagaStatus.PENDING, SagaStatus.RUNNING)
    if not waiting or t.state.pivot_passed:
        t.ignore()
        return
    _begin_compensation(t, "deadline exceeded", None)


def _retry(t: _Transition) -> None:
    state = t.state
    if state.status is not SagaStatus.FAILED:
        raise InvalidTransition(
            state.saga_id, state.status, "retry", "only a failed saga can be retried"
        )
    stuck = [s for s in t.view.values() if s.status is StepStatus.COMPENSATION_FAILED]
    if stuck:
        st = stuck[0]
        again = replace(
            st,
            status=StepStatus.COMPENSATING,
            compensation_attempt=st.compensation_attempt + 1,
            compensation_base=st.compensation_attempt,
        )
        t.state = replace(
            state, status=SagaStatus.COMPENSATING, reason=state.cause, failed_step=state.cause_step
        )
        t.put(again)
        t.send(again, "compensation", again.compensation_attempt, 0.0)
        return
    t.state = replace(state, status=SagaStatus.RUNNING, reason=None, failed_step=None)
    failed = sorted(
        (s for s in t.view.values() if s.stage == state.stage and s.status is StepStatus.FAILED),
        key=lambda s: (t.saga.position(s.step), s.index or 0),
    )
    for st in failed:
        again = replace(
            st,
            status=StepStatus.RUNNING,
            attempt=st.attempt + 1,
            attempt_base=st.attempt,
            order=None,
        )
        t.put(again)
        t.send(again, "action", again.attempt, 0.0)
    if not failed and not t.state.busy:
        _enter_stage(t, t.state.stage + 1)


def _resolve(t: _Transition, event: CompensationResolved) -> None:
    """The failed compensation of `event.step` was done by hand: go on undoing the rest."""
    state = t.state
    if state.status is not SagaStatus.FAILED:
        why = "only a failed saga has a compensation to resolve"
        raise InvalidTransition(state.saga_id, state.status, "resolve", why)
    st = t.view.get(event.step)
    if st is None or st.status is not StepStatus.COMPENSATION_FAILED:
        raise InvalidTransition(
            state.saga_id,
            state.status,
            "resolve",
            f"step {event.step!r} has no failed compensation",
        )
    t.put(replace(st, status=StepStatus.COMPENSATED, error=None))
    t.state = replace(
        state, status=SagaStatus.COMPENSATING, reason=state.cause, failed_step=state.cause_step
    )
    _continue_compensation(t)
