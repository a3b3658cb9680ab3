"""In-memory ports for tests that drive the engine without Celery."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from datetime import datetime

from sagakit.journal import Entry
from sagakit.messages import OutboxMessage


class RecordingDispatcher:
    """Keeps every message the engine sends."""

    publishes_events = False

    def __init__(self) -> None:
        self.sent: list[OutboxMessage] = []
        self._lock = threading.Lock()

    def send(
        self,
        messages: Sequence[OutboxMessage],
        entries: Sequence[Entry] = (),
        *,
        sent_at: datetime | None = None,
    ) -> list[OutboxMessage]:
        with self._lock:
            self.sent.extend(messages)
        return []

    def for_saga(self, saga_id: str) -> list[OutboxMessage]:
        return [m for m in self.sent if m.saga_id == saga_id]


class FailingDispatcher(RecordingDispatcher):
    """A broker that is down: it takes nothing."""

    def send(
        self,
        messages: Sequence[OutboxMessage],
        entries: Sequence[Entry] = (),
        *,
        sent_at: datetime | None = None,
    ) -> list[OutboxMessage]:
        return list(messages)


class RecordingPublisher:
    """Keeps every published history entry."""

    def __init__(self) -> None:
        self.entries: list[Entry] = []

    def publish(self, entries: Sequence[Entry]) -> None:
        self.entries.extend(entries)


class Broker:
    """What the sweeper asks of a broker, answered by the test."""

    def __init__(self) -> None:
        self.depths: dict[str, int] = {}
        self.epoch_at: datetime | None = None
        """The broker's epoch (None: a broker that keeps its messages)."""

    def epoch(self) -> datetime | None:
        return self.epoch_at

    def depth(self, queue: str) -> int | None:
        return self.depths.get(queue, 0)
