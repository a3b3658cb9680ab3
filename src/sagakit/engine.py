"""The engine: the one place where the pure core meets the saga log and the broker.

A transition decides on what was read of the saga and writes what changed (the head, the
step rows with their messages, the history) in one statement; then sends the messages that
are due and publishes the history entries. An attempt's outcome is decided on the read the
worker made before running it, and written only if the saga's version is still the one
read; otherwise, and for every other event, the saga is read again under its row lock
(`store.log`). A crash after the write loses nothing: every message is a step row the
sweeper can send again (`sweeper.py`).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypedDict, Unpack, cast

from .core.definition import Saga
from .core.errors import InvalidInput, UnknownSagaType, VersionNotDeployed
from .core.events import (
    CancelRequested,
    CompensationFailed,
    CompensationResolved,
    CompensationSucceeded,
    Decision,
    Direction,
    Event,
    Outcome,
    RetryRequested,
    SagaStarted,
    StepFailed,
    StepSucceeded,
    StepTimedOut,
)
from .core.inputs import check_idempotency_key, check_saga_id, validated_input
from .core.machine import decide, needs
from .core.state import SagaState, StepState, parse_instance
from .journal import Attempt, Entry, entries
from .messages import OutboxMessage, StepKwargs, seal, task_id
from .ports import Dispatcher, EventPublisher
from .store.log import Snapshot, SqlLog, Transition

if TYPE_CHECKING:
    from .tracing.spans import Tracing

logger = logging.getLogger(__name__)


def utcnow() -> datetime:
    """Return the current time, timezone-aware UTC."""
    return datetime.now(UTC)


def new_saga_id() -> str:
    """Return a fresh, URL-safe saga id."""
    return uuid.uuid4().hex[:16]


class AttemptOutcome(TypedDict, total=False):
    """What one attempt did (`Engine.finish`): ``output``, or ``error`` with its type,
    traceback and whether a retry may help, or ``timed_out``; who ran it since when, and
    the saga as the worker read it before (`snapshot`)."""

    output: Any
    error: BaseException | str | None
    error_type: str | None
    traceback: str | None
    retryable: bool
    timed_out: bool
    worker: str | None
    started_at: datetime | None
    snapshot: Snapshot | None


@dataclass(frozen=True, slots=True)
class Carrier:
    """A delivery that may run the next step where it is: an eager saga's (`Saga.eager`)
    one due message goes to it instead of the broker when `takes` says it can run it."""

    task_id: str
    """The delivery's own task id: what the worker's heartbeat holds while it runs."""
    takes: Callable[[OutboxMessage], bool]


@dataclass(frozen=True, slots=True)
class StartResult:
    """The saga a start request refers to; `created` is False for a repeated key."""

    saga_id: str
    created: bool


class Engine:
    """Starts, advances, cancels and retries sagas against the saga log."""

    def __init__(
        self,
        log: SqlLog,
        sagas: Mapping[str, Saga],
        dispatcher: Dispatcher | None,
        *,
        events: EventPublisher | None = None,
        clock: Callable[[], datetime] = utcnow,
        timeout_grace: float = 5.0,
        versions: Iterable[Saga] = (),
        tracing: Tracing | None = None,
    ) -> None:
        self.log = log
        self.tracing = tracing
        every = [*versions, *sagas.values()]
        self.versions: dict[tuple[str, int], Saga] = {(s.name, s.version): s for s in every}
        """Every registered definition by (saga type, version)."""
        self.sagas: dict[str, Saga] = {}
        """The newest version of each saga type: what new starts take."""
        for saga in self.versions.values():
            if saga.name not in self.sagas or saga.version > self.sagas[saga.name].version:
                self.sagas[saga.name] = saga
        self.dispatcher = dispatcher
        self.events = events
        self.clock = clock
        self.timeout_grace = timeout_grace

    def definition(self, saga_type: str, version: int | None = None) -> Saga:
        """Return the registered definition: `version`, or the newest.

        Raises UnknownSagaType, or VersionNotDeployed for a version not registered here.
        """
        if saga_type not in self.sagas:
            raise UnknownSagaType(saga_type, list(self.sagas))
        if version is None:
            return self.sagas[saga_type]
        saga = self.versions.get((saga_type, version))
        if saga is None:
            deployed = [v for name, v in self.versions if name == saga_type]
            raise VersionNotDeployed(saga_type, version, deployed)
        return saga

    def deployed(self, saga_type: str, version: int) -> bool:
        """Tell whether this process can advance sagas of that type and version."""
        return (saga_type, version) in self.versions

    # --- operations -------------------------------------------------------------------

    def start(
        self,
        saga_type: str,
        input: Mapping[str, Any] | None = None,
        *,
        idempotency_key: str | None = None,
        saga_id: str | None = None,
        version: int | None = None,
    ) -> StartResult:
        """Create a saga and send its first step; a repeated key returns the first saga.

        The saga runs to its end on the definition it starts with: `version` if given (a
        pinned start), else the newest registered.
        """
        saga = self.definition(saga_type, version)
        data = validated_input(input if input is not None else {}, saga.input_model)
        saga_id = check_saga_id(saga_id) if saga_id is not None else new_saga_id()
        check_idempotency_key(idempotency_key)
        now = self.clock()
        deadline = now + timedelta(seconds=saga.timeout) if saga.timeout else None
        head = SagaState(saga_id, saga.name, saga.version)
        event = SagaStarted(data)
        decision = decide(saga, head, {}, event)
        messages = self._messages(saga, decision, now, data, version=0, read={})
        rows = entries(head, decision, event, list(messages.values()), now)
        if self.tracing is not None:  # the saga's trace, in its messages and its history
            messages, rows = self.tracing.started(saga.name, saga_id, messages, rows)
        existing = self.log.start(
            head,
            data,
            decision,
            messages,
            rows,
            idempotency_key=idempotency_key,
            deadline_at=deadline,
            now=now,
        )
        if existing is not None:
            return StartResult(existing, created=False)
        self._after_commit(messages.values(), rows, now)
        return StartResult(saga_id, created=True)

    def cancel(self, saga_id: str, reason: str = "cancelled by operator") -> Decision:
        """Stop forward steps and compensate. Raises InvalidTransition past the pivot."""
        if "\x00" in reason or not reason.strip():
            raise InvalidInput("reason", "must be non-empty text without NUL characters")
        return self.record(saga_id, CancelRequested(reason))

    def retry(self, saga_id: str) -> Decision:
        """Resume a failed saga where it stopped. Raises InvalidTransition otherwise."""
        return self.record(saga_id, RetryRequested())

    def resolve(self, saga_id: str, step: str, reason: str, by: str) -> Decision:
        """Record that `by` undid `step` by hand after its compensation failed for good, and
        go on compensating; the saga ends compensated once nothing else is left.

        Raises InvalidInput for an empty reason or name, InvalidTransition unless the saga
        is failed with `step`'s compensation.
        """
        try:
            parse_instance(step)
        except ValueError:
            raise InvalidInput("step", f"{step!r} is not a step instance name") from None
        for field, value, longest in (("reason", reason, 2000), ("by", by, 200)):
            if "\x00" in value or not value.strip() or len(value) > longest:
                raise InvalidInput(
                    field, f"must be 1 to {longest} characters of text without NUL characters"
                )
        return self.record(saga_id, CompensationResolved(step, reason.strip(), by.strip()))

    def finish(self, kwargs: StepKwargs, task: str, **outcome: Unpack[AttemptOutcome]) -> Decision:
        """Record what one attempt did and advance the saga, in one write.

        `snapshot` is the saga as the worker read it before running the attempt: the
        outcome is applied to it unless the saga changed since.
        """
        return self.advance(kwargs, task, **outcome)[0]

    def advance(
        self,
        kwargs: StepKwargs,
        task: str,
        *,
        carrier: Carrier | None = None,
        **outcome: Unpack[AttemptOutcome],
    ) -> tuple[Decision, OutboxMessage | None]:
        """`finish`, and with `carrier`, hand back the next step of an eager saga to run
        where it is instead of sending it: (the decision, that step's message or None)."""
        output = outcome.get("output")
        error = outcome.get("error")
        error_type = outcome.get("error_type")
        retryable = outcome.get("retryable", True)
        timed_out = outcome.get("timed_out", False)
        text = _error_text(error)
        step, number = kwargs["step"], kwargs["attempt"]
        event: Outcome
        if kwargs["direction"] == "action":
            if timed_out:
                event = StepTimedOut(step, number)
            elif text is not None:
                kind = error_type if error_type is not None else _error_type(error)
                event = StepFailed(step, number, text, retryable, kind)
            else:
                event = StepSucceeded(step, number, output)
        elif text is not None or timed_out:
            event = CompensationFailed(step, number, text or "timed out")
        else:
            event = CompensationSucceeded(step, number)
        undo_output = output if kwargs["direction"] == "compensation" else None
        attempt = Attempt(
            task,
            outcome.get("worker"),
            outcome.get("started_at"),
            outcome.get("traceback"),
            undo_output,
        )
        return self._record(kwargs["saga_id"], event, attempt, outcome.get("snapshot"), carrier)

    def record(
        self,
        saga_id: str,
        event: Event,
        attempt: Attempt | None = None,
        snapshot: Snapshot | None = None,
    ) -> Decision:
        """Apply one event: to `snapshot` if nothing changed the saga since it was read,
        else under the saga's row lock. Raises SagaNotFound, InvalidTransition.

        With other attempts in flight (parallel branches), the saga would most likely have
        changed: the event goes under the lock at once, without a write bound to fail.
        """
        return self._record(saga_id, event, attempt, snapshot)[0]

    def _record(
        self,
        saga_id: str,
        event: Event,
        attempt: Attempt | None = None,
        snapshot: Snapshot | None = None,
        carrier: Carrier | None = None,
    ) -> tuple[Decision, OutboxMessage | None]:
        now = self.clock()
        wanted = needs(event)
        applied = None
        if snapshot is not None and snapshot.covers(wanted) and snapshot.state.busy <= 1:
            # Nothing else was in flight: the saga most likely has not changed since.
            applied = self._apply(self.log.on(snapshot), event, attempt, now, carrier)
        if applied is None:
            with self.log.transition(saga_id, wanted) as tx:
                applied = self._apply(tx, event, attempt, now, carrier)
            assert applied is not None  # under the lock, a write always takes effect
        before, decision, messages, rows = applied
        if decision.ignored:
            logger.info(
                "outcome ignored: stale or duplicate",
                extra={"saga_id": saga_id, "step": getattr(event, "step", "-")},
            )
            return decision, None
        if before.status != decision.state.status:
            logger.info(
                "saga %s",
                decision.state.status.value,
                extra={"saga_id": saga_id, "from": before.status.value},
            )
        self._after_commit(messages.values(), rows, now)
        return decision, next((m for m in messages.values() if m.carrier is not None), None)

    def _apply(
        self,
        tx: Transition,
        event: Event,
        attempt: Attempt | None,
        now: datetime,
        carrier: Carrier | None = None,
    ) -> tuple[SagaState, Decision, dict[str, OutboxMessage], list[Entry]] | None:
        """Decide on what `tx` read and write it; None if, read without the lock, the saga
        changed meanwhile (or the decision would be to ignore the event: the lock's fresh
        read tells)."""
        saga = self.definition(tx.state.saga_type, tx.state.definition_version)
        locked = tx.conn is not None
        decision = decide(saga, tx.state, tx.steps, event)
        if decision.ignored:
            return (tx.state, decision, {}, []) if locked else None
        output = (event.step, event.output) if isinstance(event, StepSucceeded) else None
        messages = self._messages(
            saga,
            decision,
            now,
            version=tx.version + 1,
            read=tx.steps,
            outputs=dict([output]) if output is not None else None,
        )
        if carrier is not None and saga.eager:
            messages = _carried(messages, carrier, now)
        rows = entries(tx.state, decision, event, list(messages.values()), now, attempt)
        sealable = _sealable(messages, _changed(decision), now)
        unsealed = not decision.state.sources and any(messages[n].state is None for n in sealable)
        if not tx.write(decision, messages, rows, now=now, output=output, next_undo=unsealed):
            return None
        if unsealed:
            # The write read the top among the instances it left alone: with those it
            # wrote, that is the next to undo.
            found = tx.unwritten_top
            _, top = _top_after({found.name: found} if found else {}, _changed(decision))
            messages = self._seal(messages, decision, tx.version + 1, top, now)
        return tx.state, decision, messages, rows

    def send(
        self,
        messages: Sequence[OutboxMessage],
        entries: Sequence[Entry] = (),
        *,
        sent_at: datetime | None = None,
    ) -> int:
        """Send messages whose rows were marked sent at `sent_at`; mark back those the
        broker refused.

        `entries` are published with them when the dispatcher publishes events too.
        """
        if self.dispatcher is None or not (messages or entries):
            return 0
        refused = self.dispatcher.send(messages, entries, sent_at=sent_at)
        if refused:
            logger.warning(
                "broker did not take %d messages; the sweeper will send them",
                len(refused),
                extra={"saga_id": refused[0].saga_id},
            )
            self.log.unsend(refused)
        return len(messages) - len(refused)

    # --- internals ----------------------------------------------------------------------

    def _messages(
        self,
        saga: Saga,
        decision: Decision,
        now: datetime,
        input: Mapping[str, Any] | None = None,
        *,
        version: int,
        read: Mapping[str, StepState],
        outputs: Mapping[str, Any] | None = None,
    ) -> dict[str, OutboxMessage]:
        """The decision's messages; those sent now carry the saga as this transition leaves
        it (`version`, after it; `read`, the instances it read), for the worker to decide on.

        When what was read does not tell which instance is next to undo afterwards (the
        top one began its compensation), the messages are returned unsealed: the write
        learns it (`Transition.write`'s `next_undo`), then `_seal` seals them."""
        state = decision.state
        out = {}
        changed = _changed(decision)
        known, top = (False, None) if state.sources else _top_after(read, changed)
        loaded: dict[str, Any] = dict(outputs or {})  # what arguments read, once per transition
        for c in decision.commands:
            out[c.step] = self.message(
                saga,
                state.saga_id,
                c.step,
                c.direction,
                c.attempt,
                c.item,
                task_id(state.saga_id, c.position, c.step, c.direction, c.attempt),
                now + timedelta(seconds=c.delay),
                input,
                loaded,
            )
        return self._seal(out, decision, version, top, now) if known else out

    def _seal(
        self,
        messages: dict[str, OutboxMessage],
        decision: Decision,
        version: int,
        top: StepState | None,
        now: datetime,
    ) -> dict[str, OutboxMessage]:
        """Seal into each message sent now the saga as the transition leaves it: the head
        at `version`, the attempt's own instance and `top`, the next to undo."""
        changed = _changed(decision)
        key = None
        for name in _sealable(messages, changed, now):
            message = messages[name]
            steps = {name: changed[name]}
            if top is not None:
                steps[top.name] = top
            carried = Snapshot(decision.state, version, steps).encode()
            key = key or self.log.state_key()
            header = seal(key, message.task_id, message.kwargs, carried)
            messages[name] = replace(message, state=header)
        return messages

    def message(
        self,
        saga: Saga,
        saga_id: str,
        step: str,
        direction: Direction,
        attempt: int,
        item: Any,
        task: str,
        not_before: datetime,
        input: Mapping[str, Any] | None = None,
        known: dict[str, Any] | None = None,
    ) -> OutboxMessage:
        """The message of one attempt (the engine's first send, and the sweeper's re-sends).

        `input` and `known` (outputs by instance name) are what the caller has at hand of
        what an existing task's arguments are taken from; the rest is read from the log
        (and added to `known`).
        """
        kwargs: StepKwargs = {
            "saga_id": saga_id,
            "saga_type": saga.name,
            "step": step,
            "attempt": attempt,
            "direction": direction,
        }
        if item is not None:
            kwargs["item"] = item
        definition = saga.step(step)
        paths = definition.plain(direction)
        call = None
        if paths is not None:
            cache = known if known is not None else {}
            if input is not None:
                cache[_INPUT] = input
            call = self._arguments(saga_id, step, paths, item, cache)
        elif definition.reads:
            self._embed(kwargs, definition.reads, input)
        name = definition.action if direction == "action" else definition.compensation
        assert name is not None
        return OutboxMessage(
            saga_id,
            task,
            name,
            definition.queue_name,
            kwargs,
            definition.timeout,
            not_before,
            call=call,
        )

    def _arguments(
        self,
        saga_id: str,
        instance: str,
        paths: Mapping[str, str],
        item: Any,
        known: dict[str, Any],
    ) -> dict[str, Any]:
        """An existing task's keyword arguments, each taken from its path (`Step.args`).

        A path whose value is missing leaves its argument out: the task's default applies,
        or the task fails naming the argument it lacks.
        """
        call: dict[str, Any] = {}
        own = instance.split("[", 1)[0]
        for argument, path in paths.items():
            source, *keys = path.split(".")
            found, value = True, cast(Any, None)
            if source == "saga_id":
                value = saga_id
            elif source == "item":
                value = item
            elif source == "input":
                if _INPUT not in known:
                    known[_INPUT] = self.log.input(saga_id)
                value = known[_INPUT]
            else:
                name = instance if source == own else source
                if name not in known:
                    found, known[name] = self.log.output(saga_id, name)
                    if not found:
                        del known[name]
                found, value = (name in known), known.get(name)
            for key in keys:
                found = found and isinstance(value, Mapping) and key in value
                value = value[key] if found else None
            if found:
                call[argument] = value
        return call

    def _embed(
        self, kwargs: StepKwargs, reads: Sequence[str], input: Mapping[str, Any] | None
    ) -> None:
        """Put what a step declared it reads into its message (for workers off the log)."""
        saga_id = kwargs["saga_id"]
        if "input" in reads:
            kwargs["input"] = dict(input) if input is not None else self.log.input(saga_id)
        names = [r for r in reads if r != "input"]
        if names:
            stored = self.log.outputs(saga_id)
            kwargs["results"] = {n: v for n, v in stored.items() if n.split("[", 1)[0] in names}

    def _after_commit(self, messages: Any, rows: Sequence[Entry], now: datetime) -> None:
        due = [m for m in messages if m.not_before <= now and m.carrier is None]
        if self.dispatcher is not None and self.dispatcher.publishes_events:
            self.send(due, rows, sent_at=now)  # one round trip for both
            return
        self.send(due, sent_at=now)
        if rows and self.events is not None:
            try:
                self.events.publish(rows)
            except Exception as exc:  # best effort: the SQL log is the source of truth
                logger.warning("event stream publish failed: %s", exc)


def _carried(
    messages: dict[str, OutboxMessage], carrier: Carrier, now: datetime
) -> dict[str, OutboxMessage]:
    """The messages, the one due given to `carrier` if it is the only one due (branches
    in parallel go to the broker, to run in parallel) and the carrier can run it."""
    due = [n for n, m in messages.items() if m.not_before <= now]
    if len(due) == 1 and carrier.takes(messages[due[0]]):
        messages[due[0]] = replace(messages[due[0]], carrier=carrier.task_id)
    return messages


def _changed(decision: Decision) -> dict[str, StepState]:
    """The instances a decision writes, by name."""
    return {st.name: st for st in decision.steps}


def _sealable(
    messages: Mapping[str, OutboxMessage], changed: Mapping[str, StepState], now: datetime
) -> list[str]:
    """The messages that carry the saga's state: those sent now, of instances written."""
    return [n for n, m in messages.items() if m.not_before <= now and n in changed]


_INPUT = "<input>"
"""Where `Engine._arguments` keeps the saga input among outputs (no step has that name)."""


def _top_after(
    read: Mapping[str, StepState], changed: Mapping[str, StepState]
) -> tuple[bool, StepState | None]:
    """(known, the instance next to undo) once `changed` is written over `read`.

    `read` holds the next to undo before the transition, if any: afterwards it is that one
    if still waiting, or a changed instance with a later order. If it stopped waiting (its
    compensation began), the one after it was not read: unknown.
    """
    before = max(
        (st for st in read.values() if st.order is not None),
        key=lambda st: st.order or 0,
        default=None,
    )
    after = {**read, **changed}
    if before is not None and after[before.name].order is None:
        return False, None
    waiting = [st for st in after.values() if st.order is not None]
    return True, max(waiting, key=lambda st: st.order or 0, default=None)


def _error_text(error: BaseException | str | None) -> str | None:
    if error is None or isinstance(error, str):
        return error
    return f"{type(error).__name__}: {error}"


def _error_type(error: BaseException | str | None) -> str:
    return "" if error is None or isinstance(error, str) else type(error).__name__
