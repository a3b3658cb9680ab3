"""Recovery: send what was not sent, re-send only what was lost, time out what overran.

Every worker runs a sweeper (`runtime.worker.SweeperThread`) that, every interval:

1. beats: records the worker's heartbeat with the task ids it runs and holds;
2. takes over from workers that died: a worker silent for `worker_lost_after` (or one
   whose name came back with a new process) has lost its tasks: those it was running time
   out (they may have taken effect), those it held unstarted are sent again;
3. sends messages whose rows are unsent: a broker that refused them, a retry's delay;
4. re-sends what the broker lost: when the broker's epoch moves (a Redis restart without
   persistence, a flush: the queues hold only what was sent since), every outstanding
   message sent before it that no live worker holds; and, as a safety net, a message
   unclaimed for `redrive_after` whose queue is empty and that no worker holds (backing
   off per row). A message still waiting in a long queue is never sent twice;
5. times out attempts that run past their step's timeout (the heartbeat says since when);
6. fires saga deadlines;
7. folds finished sagas and attempts into the metrics counters.

Several sweepers may run at once: each row is taken by one of them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol

import sqlalchemy as sa

from .core.errors import VersionNotDeployed
from .core.events import CompensationFailed, DeadlineExceeded, Direction, Event, StepTimedOut
from .engine import Engine
from .journal import Attempt
from .messages import OutboxMessage, parse_task_id
from .store import recovery, stats
from .store.prune import prune
from .store.recovery import Beat, Held, Pending

logger = logging.getLogger(__name__)


class BrokerWatch(Protocol):
    """What the sweeper asks the broker."""

    def epoch(self) -> datetime | None:
        """The time from which the broker holds every message sent (messages sent before
        it and not taken were lost); None for a broker that keeps its messages, or that
        cannot be asked now."""

    def depth(self, queue: str) -> int | None:
        """Messages waiting in `queue`, or None when the broker cannot tell."""


@dataclass(frozen=True, slots=True)
class Identity:
    """The worker process a sweeper beats for."""

    name: str
    pid: int
    started_at: datetime


@dataclass(slots=True)
class SweepReport:
    """What one sweep did."""

    sent: int = 0
    resent: int = 0
    timed_out: int = 0
    lost: int = 0
    deadlines: int = 0
    folded: int = 0
    pruned: int = 0

    def __bool__(self) -> bool:
        return any((self.sent, self.resent, self.timed_out, self.lost, self.deadlines))


@dataclass
class Sweeper:
    """One process's share of recovery (see the module docstring)."""

    engine: Engine
    db: sa.Engine
    broker: BrokerWatch | None = None
    identity: Identity | None = None
    holdings: Callable[[], Sequence[Held]] = tuple
    redrive_after: float = 30.0
    worker_lost_after: float = 30.0
    timeout_grace: float = 5.0
    rollup_every: float = 15.0
    retention: timedelta | None = None
    prune_every: float = 300.0
    batch: int = 200
    _expired: set[str] = field(default_factory=set)
    _epoch: datetime | None = None
    _redrive: recovery.Redrive | None = None
    _next_rollup: float = 0.0
    _next_prune: float = 0.0

    def beat(self) -> None:
        """Record this worker's heartbeat; take over from its previous incarnation."""
        if self.identity is None:
            return
        held = tuple(self.holdings())
        heartbeat = Beat(
            self.identity.name,
            self.identity.pid,
            self.identity.started_at,
            held,
            tuple(self.engine.versions),
        )
        previous = recovery.beat(self.db, heartbeat, self.engine.clock())
        if previous is not None:
            mine = {h.task_id for h in held}
            self._take_over(previous.name, [h for h in previous.held if h.task_id not in mine])

    def forget(self) -> None:
        """Remove this worker's heartbeat (a clean shutdown)."""
        if self.identity is not None:
            recovery.forget(self.db, self.identity.name)

    def sweep(self) -> SweepReport:
        """One pass of recovery."""
        report = SweepReport()
        self.beat()
        now = self.engine.clock()
        silent = now - timedelta(seconds=self.worker_lost_after)
        for dead in recovery.take_silent(self.db, silent):
            report.lost += self._take_over(dead.name, dead.held)
        alive = recovery.workers(self.db)
        held = {h.task_id for w in alive for h in w.held}
        report.resent += self._resend_lost(held)
        report.sent = self._send_due(now)
        report.resent += self._resend_stranded(now, held)
        report.timed_out = self._time_out(alive, now)
        report.deadlines = self._deadlines(now)
        if time.monotonic() >= self._next_rollup:
            self._next_rollup = time.monotonic() + self.rollup_every
            report.folded = self._fold(now)
        if self.retention is not None and time.monotonic() >= self._next_prune:
            self._next_prune = time.monotonic() + self.prune_every
            report.pruned = prune(self.db, now - self.retention, max_batches=20)
        return report

    def _fold(self, now: datetime) -> int:
        """Fold the metrics, several times over while a long backlog of them waits (1 s)."""
        folded, until = 0, time.monotonic() + 1.0
        while time.monotonic() < until:
            count = stats.fold(self.db, now)
            folded += count
            if count < stats.FOLD_ROWS:
                break
        return folded

    # --- the parts -----------------------------------------------------------------

    def _send_due(self, now: datetime) -> int:
        messages = []
        for p in recovery.take_due(self.db, now, self.engine.versions, self.batch):
            try:
                messages.append(self._message(p))
            except KeyError:  # a step this process's definition of the saga does not have
                logger.warning(
                    "message %s not sent: step %s is not defined here", p.task_id, p.name
                )
        return self.engine.send(messages, sent_at=now)

    def _resend_lost(self, held: set[str]) -> int:
        """Once the broker's epoch moves, send again (a batch per sweep) what was sent
        before it and is neither done nor held by a live worker."""
        epoch = self.broker.epoch() if self.broker is not None else None
        if epoch is not None and (self._epoch is None or epoch > self._epoch):
            self._epoch = epoch
            self._redrive = recovery.Redrive(epoch)
        if self._redrive is None:
            return 0
        lost = recovery.sent_before(self.db, self._redrive, self.batch)
        if len(lost) < self.batch:
            self._redrive = None
        count = recovery.unsend(self.db, [p for p in lost if not p.held_in(held)])
        if count:
            logger.warning(
                "the broker lost queued messages (restarted, flushed, or an earlier "
                "embedded run): sending %d again",
                count,
            )
        return count

    def _resend_stranded(self, now: datetime, held: set[str]) -> int:
        stale = [
            p
            for p in recovery.stale_sends(self.db, now, self.redrive_after, self.batch)
            if not p.held_in(held)
        ]
        empty: dict[str, bool] = {}
        stranded = []
        for p in stale:
            if p.queue not in empty:
                depth = self.broker.depth(p.queue) if self.broker is not None else None
                empty[p.queue] = depth == 0
            if empty[p.queue]:
                stranded.append(p)
        if stranded:
            logger.warning(
                "%d messages unclaimed for %ss with their queues empty: sending them again",
                len(stranded),
                self.redrive_after,
            )
        return recovery.unsend(self.db, stranded)

    def _take_over(self, worker: str, held: Sequence[Held]) -> int:
        """A worker died: time out what it ran, send again what it held unstarted."""
        unstarted = []
        count = 0
        running = [h for h in held if h.started is not None]
        for h in held:
            if h.started is None:
                parsed = parse_task_id(h.task_id)
                if parsed is not None:
                    unstarted.append(h.task_id)
        # What those deliveries ran where they were (eager sagas) stopped with them.
        running += [c.held for c in recovery.carried_by(self.db, [h.task_id for h in running])]
        for h in running:
            count += self._expire(h, f"worker {worker} stopped", worker)
        if unstarted:
            count += self._unsend_ids(unstarted)
        if held:
            logger.warning("worker %s stopped; took over %d of its tasks", worker, count)
        return count

    def _unsend_ids(self, task_ids: Sequence[str]) -> int:
        pending = []
        for value in task_ids:
            parsed = parse_task_id(value)
            if parsed is None:
                continue
            pending.append(
                Pending(parsed.saga_id, "", parsed.step, "", 0, 0, None, value, "", "", _EPOCH)
            )
        return recovery.unsend(self.db, pending)

    def _time_out(self, alive: Sequence[recovery.WorkerRow], now: datetime) -> int:
        count = 0
        epoch = now.timestamp()
        running: dict[str, str] = {}
        for worker in alive:
            for h in worker.held:
                if h.started is None:
                    continue
                running[h.task_id] = worker.name
                if h.soft_limit is None or h.task_id in self._expired:
                    continue
                if h.started + h.soft_limit + self.timeout_grace < epoch:
                    self._expired.add(h.task_id)
                    why = f"ran longer than its timeout of {h.soft_limit:g}s"
                    count += self._expire(h, why, worker.name)
        # Carried attempts are timed out from their step's definition: only a process
        # that has an eager saga's definition reads them.
        eager = any(saga.eager for saga in self.engine.versions.values())
        carried = recovery.carried_by(self.db, running) if running and eager else []
        for c in carried:
            limit = self._timeout_of(c)
            started = c.held.started
            if limit is None or started is None or c.held.task_id in self._expired:
                continue
            if started + limit + self.timeout_grace < epoch:
                self._expired.add(c.held.task_id)
                why = f"ran longer than its timeout of {limit:g}s"
                count += self._expire(c.held, why, running[c.carrier])
        self._expired &= set(running) | {c.held.task_id for c in carried}
        return count

    def _timeout_of(self, carried: recovery.Carried) -> float | None:
        """The timeout of a carried attempt's step, from its saga's definition."""
        try:
            saga = self.engine.definition(carried.saga_type, carried.definition_version)
            return saga.step(carried.name).timeout
        except Exception:  # a definition this process does not have: its workers time it
            return None

    def _expire(self, held: Held, why: str, worker: str) -> int:
        value = held.task_id
        parsed = parse_task_id(value)
        if parsed is None:
            return 0
        event: Event
        if parsed.direction == "action":
            event = StepTimedOut(parsed.step, parsed.attempt, why)
        else:
            event = CompensationFailed(parsed.step, parsed.attempt, f"timed out: {why}")
        started = datetime.fromtimestamp(held.started, UTC) if held.started else None
        try:
            decision = self.engine.record(parsed.saga_id, event, Attempt(value, worker, started))
        except Exception as exc:  # one saga this process cannot advance must not stop the rest
            logger.warning("attempt %s not timed out: %s", value, exc)
            return 0
        if decision.ignored:
            return 0
        logger.warning(
            "attempt %s ended: %s",
            value,
            why,
            extra={"saga_id": parsed.saga_id, "step": parsed.step, "attempt": parsed.attempt},
        )
        return 1

    def _deadlines(self, now: datetime) -> int:
        count = 0
        for saga_id in recovery.overdue_sagas(self.db, now, self.batch):
            try:
                decision = self.engine.record(saga_id, DeadlineExceeded())
            except VersionNotDeployed as exc:  # applied by a worker that has the version
                logger.debug("deadline of %s not applied: %s", saga_id, exc)
                continue
            except Exception as exc:
                logger.warning("deadline of %s not applied: %s", saga_id, exc)
                continue
            count += int(not decision.ignored)
        return count

    def _message(self, p: Pending) -> OutboxMessage:
        direction: Direction = "compensation" if p.status == "compensating" else "action"
        attempt = p.comp_attempt if direction == "compensation" else p.attempt
        saga = self.engine.definition(p.saga_type, p.definition_version)
        return self.engine.message(
            saga, p.saga_id, p.name, direction, attempt, p.item, p.task_id, p.not_before
        )


_EPOCH = datetime.fromtimestamp(0).astimezone()
