"""The tracker: folds a choreography's events into the saga log, and owns its timeouts.

It is one more consumer group on the stream (``sagakit-tracker``). Each event its script
names becomes an event of the core's state machine, applied through the engine like an
orchestrated saga's outcomes: the start event starts the saga (its id is the event's saga
id, so a repeated start finds the first), a step's ``done`` event is `StepSucceeded`, its
``failed`` event `StepFailed` (`StepTimedOut` when the tracker itself published it), its
``undone`` event `CompensationSucceeded` for each named instance the core is waiting for.
The saga log then shows a choreographed saga with the same statuses, steps and history as
an orchestrated one, marked ``choreographed``. A stale or repeated event changes nothing,
as a stale outcome does not.

Timeouts: a step whose ``done`` event has not arrived within its track's timeout makes the
tracker publish the step's ``failed`` event, marked ``timeout`` (participants then undo
what may have been done); a compensation whose ``undone`` event does not arrive in time is
recorded as failed, and the saga ends ``failed`` for an operator to see.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from ..core.errors import InvalidInput, SagaNotFound
from ..core.events import (
    CompensationFailed,
    CompensationSucceeded,
    Event,
    StepFailed,
    StepSucceeded,
    StepTimedOut,
)
from ..core.state import BUSY_STATUSES, SagaStatus, StepStatus
from ..engine import Engine
from ..journal import Attempt
from ..store import schema as t
from .bus import Bus, Entry
from .events import BadEvent, SagaEvent
from .script import Script, Track

logger = logging.getLogger(__name__)

GROUP = "sagakit-tracker"


def utcnow() -> datetime:
    return datetime.now(UTC)


class Tracker:
    """Folds events of the scripts' saga types into the saga log through `engine`."""

    def __init__(
        self,
        bus: Bus,
        engine: Engine,
        db: sa.Engine,
        scripts: Mapping[str, Script],
        *,
        consumer: str = "tracker",
        timeout: float | None = None,
        clock: Callable[[], datetime] = utcnow,
        check_every: float = 1.0,
    ) -> None:
        self.bus = bus
        self.engine = engine
        self.db = db
        self.scripts = dict(scripts)
        self.consumer = consumer
        self.timeout = timeout
        self.clock = clock
        self.check_every = check_every
        self._checked = 0.0
        self._published: dict[tuple[str, str, int], datetime] = {}
        self._early: dict[str, set[str]] = {}
        """Instances reported undone before the core was compensating them, by saga."""
        bus.ensure_group(GROUP)

    # --- the loop ---------------------------------------------------------------------

    def step(self) -> int:
        """One round: claim, read and fold events; every `check_every` s, time out late
        steps and trim the stream. Returns the events folded."""
        folded = 0
        for entry, deliveries in self.bus.reclaim(GROUP, self.consumer):
            folded += self.handle(entry, deliveries)
        for entry in self.bus.read(GROUP, self.consumer):
            folded += self.handle(entry, 1)
        if time.monotonic() - self._checked >= self.check_every:
            self._checked = time.monotonic()
            self.time_out(self.clock())
            self.bus.trim()
            for saga_id in [s for s in self._early if self._settled(s)]:
                del self._early[saga_id]
        return folded

    def handle(self, entry: Entry, deliveries: int) -> int:
        """Fold one entry and acknowledge it; 1 if it changed a saga."""
        entry_id, fields = entry
        if deliveries > self.bus.max_deliveries:
            self.bus.dead_letter(GROUP, entry, deliveries - 1)
            return 0
        try:
            event = SagaEvent.from_fields(fields)
            changed = self.fold(event)
        except (BadEvent, InvalidInput) as exc:
            self.bus.dead_letter(GROUP, entry, deliveries, f"{type(exc).__name__}: {exc}")
            return 0
        except Exception as exc:
            logger.warning("tracker: folding entry %s failed: %s", entry_id, exc)
            self.bus.note_error(GROUP, entry_id, f"{type(exc).__name__}: {exc}")
            return 0
        self.bus.ack(GROUP, entry_id)
        return int(changed)

    # --- folding ----------------------------------------------------------------------

    def start(self, event: SagaEvent) -> bool:
        """Start the saga of a start event (once: a repeat finds the first)."""
        return start_saga(self.engine, self.db, self.scripts[event.saga_type], event)

    def fold(self, event: SagaEvent) -> bool:
        """Apply one event to its saga; True if it changed it."""
        script = self.scripts.get(event.saga_type)
        if script is None:
            return False
        if event.type == script.starts:
            return self.start(event)
        changed = False
        early = self._early.get(event.saga_id)
        for kind, track in script.matches(event.type):
            instances = event.steps or (track.step,)
            try:
                if kind == "undone":
                    changed |= self._undone(event.saga_id, _attempt(event), instances)
                    continue
                for name in instances:
                    if script.track(name) is not track:
                        continue
                    outcome = _outcome(kind, name, event)
                    changed |= self._record(event.saga_id, outcome, _attempt(event))
            except SagaNotFound:
                logger.warning(
                    "tracker: %s for a saga it never saw start",
                    event.type,
                    extra={"saga_id": event.saga_id},
                )
        if early and changed:
            # Undo events that came before the core asked for them (a parallel branch's
            # last report overtaken): apply them now that it may.
            changed |= self._undone(event.saga_id, None, tuple(early))
        return changed

    def _record(self, saga_id: str, event: Event, attempt: Attempt | None = None) -> bool:
        return not self.engine.record(saga_id, event, attempt).ignored

    def _undone(self, saga_id: str, attempt: Attempt | None, instances: tuple[str, ...]) -> bool:
        """Compensation succeeded for each of `instances` the core waits on, in its order;
        the others are kept until it does (in memory: a restarted tracker times them out)."""
        wanted = set(instances) | self._early.pop(saga_id, set())
        changed = False
        for _ in range(len(wanted) + 1):
            current = self._compensating(saga_id)
            if current is None or current[0] not in wanted:
                break
            wanted.discard(current[0])
            undone = CompensationSucceeded(current[0], current[1])
            changed |= self._record(saga_id, undone, attempt)
        if wanted and not self._settled(saga_id):
            self._early[saga_id] = wanted
        return changed

    def _settled(self, saga_id: str) -> bool:
        s = t.sagas.c
        with self.db.connect() as conn:
            status = conn.execute(sa.select(s.status).where(s.saga_id == saga_id)).scalar()
        return status is None or SagaStatus(status).settled

    def _compensating(self, saga_id: str) -> tuple[str, int] | None:
        st = t.steps.c
        with self.db.connect() as conn:
            row = conn.execute(
                sa.select(st.name, st.comp_attempt).where(
                    st.saga_id == saga_id, st.status == StepStatus.COMPENSATING.value
                )
            ).first()
        return None if row is None else (str(row.name), int(row.comp_attempt))

    # --- timeouts ---------------------------------------------------------------------

    def time_out(self, now: datetime) -> int:
        """Publish the failure event of each step late with its done event; fail each
        compensation late with its undone event. Returns how many."""
        st, s = t.steps.c, t.sagas.c
        query = (
            sa.select(s.saga_type, st.saga_id, st.name, st.status, st.attempt, st.comp_attempt)
            .add_columns(st.sent_at)
            .select_from(t.steps.join(t.sagas, s.saga_id == st.saga_id))
            .where(s.choreographed.is_(True), st.status.in_(BUSY_STATUSES))
            .where(st.sent_at.is_not(None))
            .order_by(st.sent_at)
            .limit(500)
        )
        with self.db.connect() as conn:
            rows = conn.execute(query).all()
        busy = {(r.saga_id, r.name, int(r.attempt)) for r in rows}
        for key in [k for k in self._published if k not in busy]:
            del self._published[key]  # folded meanwhile: no longer late
        fired = 0
        for r in rows:
            script = self.scripts.get(r.saga_type)
            if script is None:
                continue
            track = script.track(r.name)
            limit = self.timeout or track.timeout
            if limit is None or r.sent_at + timedelta(seconds=limit) > now:
                continue
            if r.status == StepStatus.RUNNING.value and track.failed:
                fired += self._publish_timeout(script, track, r, limit, now)
            elif r.status == StepStatus.COMPENSATING.value:
                why = f"no {track.undone} within {limit:g}s"
                fired += self._record(r.saga_id, CompensationFailed(r.name, r.comp_attempt, why))
        return fired

    def _publish_timeout(
        self, script: Script, track: Track, r: Any, limit: float, now: datetime
    ) -> int:
        key = (r.saga_id, r.name, int(r.attempt))
        last = self._published.get(key)
        if last is not None and last + timedelta(seconds=limit) > now:
            return 0  # published already; the tracker folds it when it reads it back
        assert track.failed is not None
        data = {
            "steps": [r.name],
            "timeout": True,
            "error": f"no {track.done} within {limit:g}s",
            "input": self.engine.log.input(r.saga_id),
        }
        self.bus.publish([SagaEvent(track.failed, r.saga_id, script.name, data)])
        self._published[key] = now
        logger.warning(
            "tracker: %s timed out, published %s",
            r.name,
            track.failed,
            extra={"saga_id": r.saga_id},
        )
        return 1


def start_saga(engine: Engine, db: sa.Engine, script: Script, event: SagaEvent) -> bool:
    """Record the start of `event`'s saga in the saga log, marked choreographed; False if
    it was there already. Raises InvalidInput for an input the script refuses."""
    result = engine.start(
        script.name,
        event.input,
        saga_id=event.saga_id,
        idempotency_key=f"choreography:{event.saga_id}",
    )
    with db.begin() as conn:
        conn.execute(
            t.sagas.update()
            .where(t.sagas.c.saga_id == event.saga_id, t.sagas.c.choreographed.is_(False))
            .values(choreographed=True)
        )
    return result.created


def _attempt(event: SagaEvent) -> Attempt:
    """What the timeline shows of the handler that emitted `event`: the event's id (as the
    task id: the inboxes know it), its consumer and when it began."""
    return Attempt(event.id, event.source or None, event.started)


def _outcome(kind: str, name: str, event: SagaEvent) -> Event:
    if kind == "done":
        return StepSucceeded(name, 1, event.data.get("output"))
    error = str(event.data.get("error") or event.type)
    if event.data.get("timeout"):
        return StepTimedOut(name, 1, error)
    return StepFailed(name, 1, error, retryable=False, error_type="ChoreographyFailure")
