"""Redis Streams publisher for saga transitions (best effort; the SQL log is the truth)."""

from __future__ import annotations

import time
from collections.abc import Sequence

import redis

from ..journal import Entry
from .codec import encode


class RedisStreamPublisher:
    """XADDs a transition's entries in one round trip, trimmed approximately to `maxlen`."""

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

    def publish(self, entries: Sequence[Entry]) -> None:
        """Append the entries in one round trip; after a failure, pause for a few seconds."""
        if time.monotonic() < self._paused_until:
            return
        pipe = self.client.pipeline(transaction=False)
        for entry in entries:
            pipe.xadd(self.stream, encode(entry), maxlen=self.maxlen, approximate=True)  # type: ignore[arg-type]
        try:
            pipe.execute()
        except redis.RedisError:
            # Best effort: a Redis outage must not slow every transition down.
            self._paused_until = time.monotonic() + 5.0
            raise
