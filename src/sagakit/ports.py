"""The engine's outward ports: how messages leave and who hears of transitions."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Protocol

from .journal import Entry
from .messages import OutboxMessage


class Dispatcher(Protocol):
    """Sends step messages to their services' queues."""

    publishes_events: bool
    """True when `send` also publishes the entries it is given to the event stream."""

    def send(
        self,
        messages: Sequence[OutboxMessage],
        entries: Sequence[Entry] = (),
        *,
        sent_at: datetime | None = None,
    ) -> list[OutboxMessage]:
        """Send the messages (in one round trip where the broker allows it), and publish
        `entries` with them if `publishes_events`. `sent_at` is the time the messages'
        rows were marked sent (a broker that can lose its queues records it, see
        `runtime.dispatch.EPOCH_KEY`).

        Returns the messages the broker did not take; the caller marks them unsent and the
        sweeper sends them again. Never raises for a broker that is down.
        """


class EventPublisher(Protocol):
    """Hears of every transition's history entries (live views, other services)."""

    def publish(self, entries: Sequence[Entry]) -> None:
        """Publish the entries; best effort: may raise, callers log and go on."""
