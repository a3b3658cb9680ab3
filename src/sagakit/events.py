"""Redis Streams publisher for saga transitions (best effort; the SQL log is the truth)."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import redis


class RedisStreamPublisher:
    """XADDs each history entry to the events stream, trimmed approximately to `maxlen`."""

    def __init__(
        self, client: redis.Redis, stream: str = "sagakit:events", maxlen: int = 100_000
    ) -> None:
        self.client = client
        self.stream = stream
        self.maxlen = maxlen
        self._paused_until = 0.0

    @classmethod
    def from_url(cls, url: str, stream: str, maxlen: int) -> RedisStreamPublisher:
        """Connect with short timeouts so a Redis outage never stalls a transition."""
        client = redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
        return cls(client, stream, maxlen)

    def publish(self, entries: Sequence[dict[str, Any]]) -> None:
        """Append the entries in one round trip; after a failure, pause for a few seconds."""
        if time.monotonic() < self._paused_until:
            return
        pipe = self.client.pipeline(transaction=False)
        for entry in entries:
            pipe.xadd(self.stream, encode_entry(entry), maxlen=self.maxlen, approximate=True)
        try:
            pipe.execute()
        except redis.RedisError:
            # Best effort: a Redis outage must not slow every transition down.
            self._paused_until = time.monotonic() + 5.0
            raise


def encode_entry(entry: dict[str, Any]) -> dict[Any, Any]:
    """Flatten one history entry into stream fields."""
    at = entry.get("at")
    return {
        "saga_id": str(entry["saga_id"]),
        "event": str(entry["event"]),
        "step": str(entry.get("step") or ""),
        "attempt": str(entry.get("attempt") or ""),
        "from": str(entry.get("from_status") or ""),
        "status": str(entry.get("to_status") or ""),
        "at": at.isoformat() if isinstance(at, datetime) else str(at or ""),
        "detail": json.dumps(entry.get("detail") or {}, default=str),
    }
