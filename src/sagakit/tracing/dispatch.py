"""The dispatcher that puts the saga's trace context into every step message it sends."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import replace
from datetime import datetime

import sqlalchemy as sa

from ..journal import Entry
from ..messages import OutboxMessage
from ..ports import Dispatcher
from ..store.schema import transitions
from .spans import Tracing

Lookup = Callable[[Collection[str]], Mapping[str, str]]
"""Saga ids -> the ``traceparent`` their start recorded."""


class TracingDispatcher:
    """Wraps a dispatcher: each message carries the context given it (a saga's start), else
    the current one if it is an attempt of the same saga (whose outcome sent it), else (the
    sweeper's sends, a cancel or retry) the one its saga's start recorded (`started_traces`)."""

    def __init__(self, inner: Dispatcher, tracing: Tracing, lookup: Lookup) -> None:
        self.inner = inner
        self.tracing = tracing
        self.lookup = lookup
        self.publishes_events = inner.publishes_events

    def send(
        self,
        messages: Sequence[OutboxMessage],
        entries: Sequence[Entry] = (),
        *,
        sent_at: datetime | None = None,
    ) -> list[OutboxMessage]:
        """Send through the wrapped dispatcher, each message with its trace context."""
        if any(m.trace is None for m in messages):
            messages = self._traced(messages)
        return self.inner.send(messages, entries, sent_at=sent_at)

    def _traced(self, messages: Sequence[OutboxMessage]) -> list[OutboxMessage]:
        running, carrier = self.tracing.running()
        if not carrier:
            running = None
        wanted = {m.saga_id for m in messages if m.trace is None and m.saga_id != running}
        recorded: Mapping[str, str] = {}
        if wanted:
            try:
                recorded = self.lookup(wanted)
            except Exception:  # tracing never stops a message: it goes without a parent
                recorded = {}
        traced = []
        for m in messages:
            if m.trace is None and m.saga_id == running:
                m = replace(m, trace=carrier)
            elif m.trace is None and m.saga_id in recorded:
                m = replace(m, trace={"traceparent": recorded[m.saga_id]})
            traced.append(m)
        return traced


def started_traces(db: sa.Engine) -> Lookup:
    """A `Lookup` reading the ``saga_started`` history entries of the saga log `db`."""
    query = sa.select(transitions.c.saga_id, transitions.c.detail).where(
        transitions.c.event == "saga_started",
        transitions.c.saga_id.in_(sa.bindparam("ids", expanding=True)),
    )

    def lookup(saga_ids: Collection[str]) -> Mapping[str, str]:
        with db.connect() as conn:
            rows = conn.execute(query, {"ids": list(saga_ids)}).all()
        return {
            saga_id: detail["trace"]
            for saga_id, detail in rows
            if isinstance(detail, dict) and isinstance(detail.get("trace"), str)
        }

    return lookup
