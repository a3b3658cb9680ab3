"""The read side: what the API, the CLI and the dashboard show, composed in one place.

A saga's attempts are told by its history (each scheduled message, each outcome with its
worker, start, error and traceback) together with its step rows (an action's output) and
the workers' heartbeats (which attempts are running right now, and since when).
"""

from __future__ import annotations

import base64
import binascii
import math
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from .core.errors import InvalidInput
from .core.inputs import check_saga_id
from .core.machine import UndoPlan, undo_plan
from .core.state import SagaState
from .journal import OUTCOME_EVENTS, OUTCOME_LABELS, event_of
from .store import overview, reads
from .store.dbapi import Connections
from .store.overview import FailedSaga, WorkerBeat
from .store.reads import Cursor, HistoryRecord, SagaRecord, StepRecord

if TYPE_CHECKING:
    from .core.definition import Saga
    from .core.ledger import Ledger

_EPOCH = datetime(1970, 1, 1).astimezone()


def iso(value: datetime | None) -> str | None:
    """ISO 8601 with timezone, or None."""
    return None if value is None else value.isoformat()


def duration(start: datetime | None, end: datetime | None) -> float | None:
    """Seconds between two instants, or None when either is missing."""
    if start is None or end is None:
        return None
    return round((end - start).total_seconds(), 4)


def encode_cursor(record: SagaRecord) -> str:
    """An opaque cursor pointing just past `record` in a newest-first listing."""
    raw = f"{record.created_at.isoformat()}|{record.saga_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(value: str) -> Cursor:
    """The position a cursor names. Raises InvalidInput for anything else."""
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).decode()
        created, _, saga_id = raw.partition("|")
        return Cursor(datetime.fromisoformat(created), check_saga_id(saga_id))
    except (ValueError, binascii.Error, UnicodeDecodeError, InvalidInput):
        raise InvalidInput("cursor", "not a cursor returned by a previous page") from None


Deployed = dict[str, set[int]] | None
"""The definition versions live workers can advance, by saga type (`reads.deployed`)."""


def is_deployed(record: SagaRecord, deployed: Deployed) -> bool | None:
    """Whether a live worker can advance the saga's definition version; None when no
    worker says, or nothing is left to advance (completed, compensated)."""
    if deployed is None or record.status in ("completed", "compensated"):
        return None
    return record.state.definition_version in deployed.get(record.saga_type, set())


def summary_view(record: SagaRecord, deployed: Deployed = None) -> dict[str, Any]:
    """The fields a listing shows."""
    return {
        "id": record.saga_id,
        "type": record.saga_type,
        "definition_version": record.state.definition_version,
        "definition_deployed": is_deployed(record, deployed),
        "status": record.status,
        "reason": record.reason,
        "failed_step": record.failed_step,
        "created_at": iso(record.created_at),
        "updated_at": iso(record.updated_at),
        "finished_at": iso(record.finished_at),
        "duration": duration(record.created_at, record.finished_at),
        "stage": record.state.stage,
        "choreographed": record.choreographed,
    }


def transition_view(h: HistoryRecord) -> dict[str, Any]:
    """One history entry."""
    return {
        "id": h.id,
        "event": h.event,
        "step": h.step,
        "attempt": h.attempt,
        "from": h.from_status,
        "to": h.to_status,
        "at": iso(h.at),
        "detail": h.detail,
    }


@dataclass
class AttemptView:
    """One attempt of one step instance's action or compensation, as the history tells it."""

    direction: str
    attempt: int
    step: str = ""
    task_id: str = ""
    task_name: str = ""
    queue: str = ""
    status: str = "scheduled"
    worker: str | None = None
    scheduled_at: datetime | None = None
    not_before: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    output: Any = None
    error: str | None = None
    traceback: str | None = None
    carried_by: str | None = None
    """The task id of the delivery that ran this attempt where it was (an eager saga)."""

    def view(self) -> dict[str, Any]:
        return {
            "attempt": self.attempt,
            "direction": self.direction,
            "status": self.status,
            "task_id": self.task_id,
            "task_name": self.task_name,
            "queue": self.queue,
            "worker": self.worker,
            "scheduled_at": iso(self.scheduled_at),
            "not_before": iso(self.not_before),
            "started_at": iso(self.started_at),
            "finished_at": iso(self.finished_at),
            "duration": duration(self.started_at, self.finished_at),
            "output": self.output,
            "error": self.error,
            "traceback": self.traceback,
            "carried_by": self.carried_by,
        }


def attempts(
    history: Iterable[HistoryRecord],
    steps: Sequence[StepRecord],
    running: dict[str, tuple[str, datetime]] | None = None,
) -> dict[tuple[str, str], list[AttemptView]]:
    """Every attempt by (instance, direction), in order, told by the history."""
    found: dict[tuple[str, str, int], AttemptView] = {}
    outputs = {s.state.name: s.output for s in steps}
    for h in history:
        detail = h.detail or {}
        for sent in detail.get("scheduled") or ():
            _scheduled(found, str(sent.get("step", "")), int(sent.get("attempt", 1)), h.at, sent)
        if h.step is None or h.attempt is None:
            continue
        if h.event in ("step_scheduled", "compensation_scheduled"):  # entries of older logs
            direction = "action" if h.event == "step_scheduled" else "compensation"
            _scheduled(found, h.step, h.attempt, h.at, {**detail, "direction": direction})
        elif h.event in ("step_started", "compensation_started"):  # entries of older logs
            direction = "action" if h.event == "step_started" else "compensation"
            a = found.setdefault(
                (h.step, direction, h.attempt), AttemptView(direction, h.attempt, h.step)
            )
            a.started_at, a.worker, a.status = h.at, detail.get("worker"), "running"
        elif h.event in OUTCOME_EVENTS:
            direction, status = OUTCOME_LABELS[h.event]
            a = found.setdefault(
                (h.step, direction, h.attempt), AttemptView(direction, h.attempt, h.step)
            )
            a.status = status
            a.finished_at = h.at
            a.started_at = h.started_at or a.started_at
            a.worker = detail.get("worker") or a.worker
            a.task_id = a.task_id or str(detail.get("task_id", ""))
            a.error = detail.get("error")
            a.traceback = detail.get("traceback")
            if status == "timed_out":
                a.error = a.error or f"attempt {h.attempt} timed out"
            if direction == "compensation":
                a.output = detail.get("output")
            elif status == "succeeded":
                a.output = outputs.get(h.step)
    # Run where their carrier is (an eager saga's next step): running as long as it is,
    # since the write that handed them to it.
    carried = {s.task_id: s for s in steps if s.carrier is not None}
    for a in found.values():
        if a.status != "scheduled" or not running:
            continue
        if a.task_id in running:
            a.worker, a.started_at = running[a.task_id]
            a.status = "running"
        elif a.task_id in carried and carried[a.task_id].carrier in running:
            row = carried[a.task_id]
            a.worker = running[str(row.carrier)][0]
            a.started_at = row.sent_at
            a.status = "running"
    grouped: dict[tuple[str, str], list[AttemptView]] = {}
    for (step, direction, _), a in sorted(found.items(), key=lambda kv: kv[0][2]):
        grouped.setdefault((step, direction), []).append(a)
    return grouped


def _scheduled(
    found: dict[tuple[str, str, int], AttemptView],
    step: str,
    attempt: int,
    at: datetime,
    sent: dict[str, Any],
) -> None:
    """Record when an attempt was scheduled, its task and queue, and its backoff."""
    direction = str(sent.get("direction", "action"))
    a = found.setdefault((step, direction, attempt), AttemptView(direction, attempt, step))
    a.task_id = str(sent.get("task_id", ""))
    a.task_name = str(sent.get("task", ""))
    a.queue = str(sent.get("queue", ""))
    a.scheduled_at = at
    a.not_before = at + timedelta(seconds=float(sent.get("delay") or 0))
    a.carried_by = str(sent["carrier"]) if sent.get("carrier") else None


def saga_view(
    record: SagaRecord,
    steps: Sequence[StepRecord],
    history: Sequence[HistoryRecord],
    running: dict[str, tuple[str, datetime]] | None = None,
    deployed: Deployed = None,
) -> dict[str, Any]:
    """Everything about one saga: status, steps with their attempts, history."""
    tried = attempts(history, steps, running)
    step_views = [
        {
            "name": s.state.name,
            "step": s.state.step,
            "index": s.state.index,
            "stage": s.state.stage,
            "status": s.state.status.value,
            "item": s.state.item,
            "output": s.output,
            "error": s.state.error,
            "attempts": [a.view() for a in tried.get((s.state.name, "action"), [])],
            "compensations": [a.view() for a in tried.get((s.state.name, "compensation"), [])],
        }
        for s in steps
    ]
    return {
        **summary_view(record, deployed),
        "input": record.input,
        "idempotency_key": record.idempotency_key,
        "deadline_at": iso(record.deadline_at),
        "steps": step_views,
        "history": [transition_view(h) for h in history],
    }


STATUSES = ("pending", "running", "compensating", "completed", "compensated", "failed")
SETTLED = ("completed", "compensated", "failed")
_DIGITS = re.compile(r"\d+")


@dataclass
class AttentionGroup:
    """Failed sagas that stopped at the same step with the same error (digits aside)."""

    saga_type: str
    step: str
    kind: str
    """``compensation`` when a compensation exhausted its retries, else ``action``."""
    error: str
    sagas: list[FailedSaga] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class TypeHealth:
    """One saga type over the health window."""

    saga_type: str
    started: int
    settled: dict[str, int]
    p50: float | None
    p95: float | None
    compensation_failures: int


@dataclass(frozen=True, slots=True)
class Health:
    """The health window's figures per type, and every worker's heartbeat."""

    since: datetime
    types: list[TypeHealth]
    workers: list[WorkerBeat]


def _percentile(ordered: Sequence[float], q: float) -> float | None:
    """The `q` quantile of sorted values (nearest rank), or None when there are none."""
    if not ordered:
        return None
    rank = max(1, math.ceil(q * len(ordered)))
    return round(ordered[rank - 1], 3)


class Queries:
    """Reads of the saga log for every entry point.

    `db` gives the connections: an engine's pool (`store.db.Pooled`) in a long-lived
    process, `store.dbapi.Direct` in a command that only reads.
    """

    def __init__(self, db: Connections) -> None:
        self.db = db

    def get(self, saga_id: str) -> SagaRecord:
        """One saga. Raises SagaNotFound."""
        return reads.get(self.db, saga_id)

    def history(self, saga_id: str, *, after: int = 0) -> list[HistoryRecord]:
        """The saga's history after entry `after`."""
        return reads.history(self.db, saga_id, after=after)

    def steps(self, saga_id: str) -> list[StepRecord]:
        """The saga's step rows."""
        return reads.steps(self.db, saga_id)

    def attempts(self, saga_id: str) -> list[AttemptView]:
        """Every attempt of the saga's actions and compensations, in the order made."""
        told = attempts(self.history(saga_id), self.steps(saga_id), self._running())
        every = [a for group in told.values() for a in group]
        return sorted(every, key=lambda a: a.scheduled_at or a.finished_at or _EPOCH)

    def detail(self, saga_id: str) -> dict[str, Any]:
        """The full view of one saga. Raises SagaNotFound."""
        record = self.get(saga_id)
        history = self.history(saga_id)
        steps = self.steps(saga_id)
        running = {} if record.state.status.settled else self._running()
        return saga_view(record, steps, history, running, self.deployed())

    def deployed(self) -> Deployed:
        """The definition versions the live workers can advance, by saga type (None when
        no worker says): a saga whose version is missing waits for it."""
        return reads.deployed(self.db)

    def _running(self) -> dict[str, tuple[str, datetime]]:
        """Task ids the live workers say they run: (worker, since when)."""
        return {
            task_id: (worker, datetime.fromtimestamp(started, UTC))
            for worker, task_id, started in reads.running(self.db)
        }

    def page(
        self,
        *,
        status: str | None = None,
        saga_type: str | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        search: str | None = None,
        cursor: str | None = None,
        limit: int = 50,
    ) -> tuple[list[dict[str, Any]], str | None]:
        """One page of sagas, newest first, and the cursor of the next page (or None)."""
        records = reads.list_sagas(
            self.db,
            status=status,
            saga_type=saga_type,
            created_after=created_after,
            created_before=created_before,
            search=search,
            after=decode_cursor(cursor) if cursor else None,
            limit=limit + 1,
        )
        more = len(records) > limit
        records = records[:limit]
        following = encode_cursor(records[-1]) if more and records else None
        deployed = self.deployed() if records else None
        return [summary_view(r, deployed) for r in records], following

    def counts(
        self,
        *,
        saga_type: str | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
    ) -> dict[str, int]:
        """How many sagas are in each status, every status named (0 when none); a count
        above `COUNT_CAP` means more than that (counting stops there)."""
        found = overview.count_by_status(
            self.db,
            STATUSES,
            saga_type=saga_type,
            created_after=created_after,
            created_before=created_before,
        )
        return {status: found.get(status, 0) for status in STATUSES}

    def undo_plan(self, saga_id: str) -> UndoPlan:
        """What a failure or a cancel of the saga now would undo, in order (the core says)."""
        record = self.get(saga_id)
        return undo_plan(record.state, [s.state for s in self.steps(saga_id)])

    def attention(self, *, limit: int = 500) -> list[AttentionGroup]:
        """Failed sagas, grouped by the step they stopped at and its error, largest first."""
        groups: dict[tuple[str, str, str, str], AttentionGroup] = {}
        for f in overview.failed(self.db, limit=limit):
            step = f.record.failed_step or ""
            kind = "compensation" if f.step_status == "compensation_failed" else "action"
            error = f.step_error or f.record.reason or ""
            key = (f.record.saga_type, step.split("[", 1)[0], kind, _DIGITS.sub("#", error))
            group = groups.setdefault(key, AttentionGroup(key[0], key[1], kind, error))
            group.sagas.append(f)
        return sorted(groups.values(), key=lambda g: -len(g.sagas))

    def health(self, now: datetime, *, window: timedelta = timedelta(hours=1)) -> Health:
        """The last `window`: sagas started and settled per type, durations, failures."""
        since = now - window
        started = overview.started_since(self.db, since)
        finished = overview.finished_since(self.db, since)
        failures = overview.compensation_failures_since(self.db, since)
        types = sorted(set(started) | {t for t, _, _ in finished} | set(failures))
        rows = []
        for saga_type in types:
            mine = [(status, took) for t, status, took in finished if t == saga_type]
            took = sorted(seconds for _, seconds in mine)
            rows.append(
                TypeHealth(
                    saga_type,
                    started.get(saga_type, 0),
                    {s: sum(1 for status, _ in mine if status == s) for s in SETTLED},
                    _percentile(took, 0.5),
                    _percentile(took, 0.95),
                    failures.get(saga_type, 0),
                )
            )
        return Health(since, rows, overview.workers(self.db))

    def statuses(self, saga_ids: Sequence[str]) -> dict[str, str]:
        """The status of each existing saga among `saga_ids`."""
        return reads.statuses(self.db, saga_ids)

    def wait(self, saga_id: str, timeout: float = 60.0, poll: float = 0.05) -> SagaRecord:
        """Block until the saga settles (scripts and tests). Raises TimeoutError."""
        deadline = time.monotonic() + timeout
        while True:
            record = self.get(saga_id)
            if record.state.status.settled:
                return record
            if time.monotonic() >= deadline:
                raise TimeoutError(f"saga {saga_id} still {record.status} after {timeout}s")
            time.sleep(poll)

    def stored(self, saga_id: str) -> Ledger:
        """The saga's state as the log holds it: its head and every step instance."""
        from .core.ledger import Ledger

        record = self.get(saga_id)
        return Ledger(record.state, {s.state.name: s.state for s in self.steps(saga_id)})

    def replay(self, saga: Saga, saga_id: str) -> Ledger:
        """Fold the saga's history back through the state machine (it must equal `stored`)."""
        from .core.ledger import replay

        record = self.get(saga_id)
        outputs = {s.state.name: s.output for s in self.steps(saga_id)}
        events = [
            event
            for h in self.history(saga_id)
            if (
                event := event_of(
                    h.event,
                    h.step,
                    h.attempt,
                    h.detail,
                    input=lambda: record.input or {},
                    output=outputs.get,
                )
            )
            is not None
        ]
        head = SagaState(saga_id, record.saga_type, record.state.definition_version)
        return replay(saga, head, events)

    def ping(self) -> None:
        """Raise if the saga log cannot be reached."""
        reads.ping(self.db)

    def missing_log(self, error: BaseException) -> bool:
        """Whether `error`, raised by a read, only says the log has no tables yet (nothing
        ever ran on this database)."""
        return reads.missing_log(self.db, error)
