"""Participants: a service's handlers for a choreography's events, and the loop that runs them.

A handler runs inside one transaction of its service's own database, together with the
inbox row that says the event was handled and the outbox rows of the events it emits; the
entry is acknowledged only after that commit, and the relay then publishes the outbox.
So an event is handled at most once per service however often it is delivered, and what a
handler emits is published at least once, never without its effect, never lost with it.

Service code reaches the handler's transaction through `joined()`: a step function written
for the orchestrator (`sagakit.idempotency.once` in its own transaction) runs unchanged
when its transaction joins the handler's as a savepoint.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import redis
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from .bus import Bus, Entry
from .events import BadEvent, Delivery, SagaEvent
from .tables import ensure_tables, gathered, inbox, outbox, utcnow

logger = logging.getLogger(__name__)

RELAY_EVERY = 5.0
"""Seconds between a runner's looks for outbox rows another process left unsent."""

_JOINED: ContextVar[Local | None] = ContextVar("sagakit_choreography_tx", default=None)


def joined() -> sa.Connection | None:
    """The open transaction of the handler running in this context, if any."""
    local = _JOINED.get()
    return None if local is None else local.conn


def after_commit(work: Callable[[], None]) -> None:
    """Run `work` once the handler's transaction in this context has committed (at once
    outside a handler): what must see the committed work, such as a file written from it."""
    local = _JOINED.get()
    if local is None:
        work()
    else:
        local.committed.append(work)


class Local:
    """What a handler is given besides its event: its transaction, and what to emit."""

    def __init__(
        self,
        participant: Participant,
        conn: sa.Connection,
        delivery: Delivery,
        consumer: str = "",
    ) -> None:
        self.participant = participant
        self.conn = conn
        self.delivery = delivery
        self.consumer = consumer
        self.started_at = utcnow().isoformat()
        self.emitted: list[SagaEvent] = []
        self.committed: list[Callable[[], None]] = []
        """Work to run after the commit (`after_commit`)."""

    def emit(self, type: str, data: Mapping[str, Any] | None = None) -> SagaEvent:
        """Publish `type` for this saga once the handler's transaction commits."""
        event = self.delivery.event
        emitted = SagaEvent(
            type,
            event.saga_id,
            event.saga_type,
            dict(data or {}),
            source=self.consumer,
            started_at=self.started_at,
        )
        self.emitted.append(emitted)
        return emitted

    def gather(self, name: str, part: str, data: Any, total: int) -> dict[str, Any] | None:
        """Keep one part of a join; all parts by name once `total` are in, else None.

        Concurrent handlers of one saga's parts take turns on a lock row, so exactly one
        sees the join complete.
        """
        saga_id = self.delivery.event.saga_id
        key = {"service": self.participant.service, "saga_id": saga_id, "name": name}
        _insert_new(self.conn, gathered, {**key, "part": "", "data": None})
        lock = sa.select(gathered.c.part).where(*_match(key), gathered.c.part == "")
        self.conn.execute(lock.with_for_update())
        _insert_new(self.conn, gathered, {**key, "part": part, "data": data})
        rows = self.conn.execute(
            sa.select(gathered.c.part, gathered.c.data).where(*_match(key), gathered.c.part != "")
        ).all()
        return {r.part: r.data for r in rows} if len(rows) >= total else None


def _match(key: Mapping[str, str]) -> list[Any]:
    return [gathered.c[name] == value for name, value in key.items()]


Handler = Callable[[Delivery, Local], None]


class Participant:
    """A service's part in choreographies: handlers by event type, and its database.

    ``robots = Participant("robots", database=lambda: engine_of_robots)``, then
    ``@robots.on("mission_requested")``. The service's consumer group is its name.
    """

    def __init__(self, service: str, database: Callable[[], sa.Engine]) -> None:
        self.service = service
        self.database = database
        self.handlers: dict[str, Handler] = {}

    def on(self, *types: str) -> Callable[[Handler], Handler]:
        """Register a handler for events of `types`."""

        def register(handler: Handler) -> Handler:
            for type in types:
                if type in self.handlers:
                    raise ValueError(f"{self.service} already handles {type!r}")
                self.handlers[type] = handler
            return handler

        return register


def guarded(step: Callable[[], int]) -> bool:
    """Run one round of a loop; False, after one line of log, if Redis or the database
    failed it (the loop then waits a little and goes on: nothing was acknowledged)."""
    try:
        step()
    except (redis.RedisError, sa.exc.DBAPIError) as exc:
        logger.warning("choreography: %s: %s", type(exc).__name__, str(exc).splitlines()[0])
        return False
    except Exception:
        logger.exception("choreography: round failed")
        return False
    return True


def consumer_name(service: str) -> str:
    """A consumer name unique to this process: ``robots@host:pid``."""
    return f"{service}@{socket.gethostname()}:{os.getpid()}"


class Runner:
    """Runs one participant in this process: reclaim, read, handle, acknowledge, relay."""

    def __init__(self, participant: Participant, bus: Bus, *, consumer: str | None = None) -> None:
        self.participant = participant
        self.bus = bus
        self.group = participant.service
        self.consumer = consumer or consumer_name(participant.service)
        self.db = participant.database()
        self._relay_due = 0.0
        ensure_tables(self.db)
        bus.ensure_group(self.group)

    def run(self, stop: threading.Event | None = None) -> None:
        """Handle events until `stop` is set."""
        stop = stop or threading.Event()
        logger.info("participant %s consuming %s", self.consumer, self.bus.stream)
        while not stop.is_set():
            if not guarded(self.step):
                stop.wait(1.0)

    def step(self) -> int:
        """One round: relay, claim what a dead consumer left, read new events. Returns
        the events handled."""
        if time.monotonic() >= self._relay_due:
            # Rows a crashed process of this service left unsent; this process's own are
            # relayed as soon as their transaction commits.
            self._relay_due = time.monotonic() + RELAY_EVERY
            self.relay()
        handled = 0
        for entry, deliveries in self.bus.reclaim(self.group, self.consumer):
            handled += self.handle(entry, deliveries)
        for entry in self.bus.read(self.group, self.consumer):
            handled += self.handle(entry, 1)
        return handled

    def handle(self, entry: Entry, deliveries: int) -> int:
        """Handle one entry (acknowledged once its effects commit); 1 if a handler ran."""
        entry_id, fields = entry
        try:
            event = SagaEvent.from_fields(fields)
        except BadEvent as exc:
            self.bus.dead_letter(self.group, entry, deliveries, f"not an event: {exc}")
            return 0
        handler = self.participant.handlers.get(event.type)
        if handler is None:
            self.bus.ack(self.group, entry_id)
            return 0
        if deliveries > self.bus.max_deliveries:
            self.bus.dead_letter(self.group, entry, deliveries - 1)
            return 0
        replayed = int(_text(fields.get(b"replayed", fields.get("replayed", b"0"))) or 0)
        delivery = Delivery(entry_id, event, replayed + deliveries)
        try:
            ran = self._transaction(handler, delivery)
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            logger.warning(
                "%s: handling %s failed (delivery %d): %s",
                self.group,
                event.type,
                deliveries,
                error,
                extra={"saga_id": event.saga_id},
            )
            self.bus.note_error(self.group, entry_id, error)
            return 0
        self.bus.ack(self.group, entry_id)
        if ran:
            self.relay()
        return int(ran)

    def _transaction(self, handler: Handler, delivery: Delivery) -> bool:
        event = delivery.event
        with self.db.begin() as conn:
            new = _insert_new(
                conn,
                inbox,
                {
                    "service": self.group,
                    "event_id": event.id,
                    "event_type": event.type,
                    "saga_id": event.saga_id,
                    "consumer": self.consumer,
                    "attempt": delivery.attempt,
                    "handled_at": utcnow(),
                },
            )
            if not new:
                return False  # handled before: acknowledged without running again
            local = Local(self.participant, conn, delivery, self.consumer)
            with _joining(local):
                handler(delivery, local)
            now = utcnow()
            for emitted in local.emitted:
                conn.execute(
                    outbox.insert().values(
                        service=self.group,
                        event_id=emitted.id,
                        stream=self.bus.stream,
                        fields=emitted.fields(),
                        created_at=now,
                    )
                )
        for work in local.committed:
            try:
                work()
            except Exception:  # the effect is committed; what follows it is best effort
                logger.exception("%s: work after the commit failed", self.group)
        return True

    def relay(self, limit: int = 100) -> int:
        """Publish this service's unsent outbox rows and mark them sent."""
        o = outbox.c
        with self.db.begin() as conn:
            rows = conn.execute(
                sa.select(o.id, o.fields)
                .where(o.sent_at.is_(None), o.service == self.group)
                .order_by(o.id)
                .limit(limit)
                .with_for_update(skip_locked=True)
            ).all()
            if not rows:
                return 0
            # Published before the commit: a crash in between publishes them again, and
            # every inbox knows their ids.
            self.bus.publish([dict(r.fields) for r in rows])
            conn.execute(
                outbox.update().where(o.id.in_([r.id for r in rows])).values(sent_at=utcnow())
            )
        return len(rows)


@contextmanager
def _joining(local: Local) -> Iterator[None]:
    token = _JOINED.set(local)
    try:
        yield
    finally:
        _JOINED.reset(token)


def _insert_new(conn: sa.Connection, table: sa.Table, values: Mapping[str, Any]) -> bool:
    """INSERT unless the key exists; True if a row was inserted."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    statement = dialect.insert(table).values(**values).on_conflict_do_nothing()
    return bool(conn.execute(statement).rowcount)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
