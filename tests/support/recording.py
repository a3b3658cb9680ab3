"""In-memory ports for tests that drive the engine without Celery."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from sagakit.store import OutboxMessage


class RecordingDispatcher:
    """Keeps every message the engine sends."""

    def __init__(self) -> None:
        self.sent: list[OutboxMessage] = []
        self._lock = threading.Lock()

    def send(self, message: OutboxMessage) -> None:
        with self._lock:
            self.sent.append(message)

    def for_saga(self, saga_id: str) -> list[OutboxMessage]:
        return [m for m in self.sent if m.saga_id == saga_id]


class FailingDispatcher(RecordingDispatcher):
    """A broker that is down."""

    def send(self, message: OutboxMessage) -> None:
        raise ConnectionError("broker unreachable")


class RecordingPublisher:
    """Keeps every published history entry."""

    def __init__(self) -> None:
        self.entries: list[dict[str, Any]] = []

    def publish(self, entries: Sequence[dict[str, Any]]) -> None:
        self.entries.extend(entries)
