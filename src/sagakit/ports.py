"""The engine's outward ports: how commands leave and how events are published."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from .store.records import OutboxMessage


class Dispatcher(Protocol):
    """Sends one outbox message to its service's queue."""

    def send(self, message: OutboxMessage) -> None:
        """Send the message; raise if the broker cannot take it (it is re-sent later)."""


class EventPublisher(Protocol):
    """Publishes transition entries for live views (best effort)."""

    def publish(self, entries: Sequence[dict[str, Any]]) -> None:
        """Append entries to the event stream; may raise, callers log and go on."""
