"""Whether the broker takes a connection now: checked before a request sends messages.

On a ``redis://`` broker the check is one PING on a kept connection, a fraction of a
millisecond, cheap enough for every request that starts a saga. A fresh kombu connection
costs about 5 ms there (kombu builds a transport, a channel and a connection pool for it),
so it is kept for the other brokers.
"""

from __future__ import annotations

from typing import Any


class BrokerProbe:
    """Checks that the broker of one Celery app answers."""

    def __init__(self, app: Any, timeout: float = 2.0) -> None:
        self.app = app
        self.timeout = timeout
        self._client: Any = None
        url = str(app.conf.broker_url or "")
        if url.startswith("redis://") and "?" not in url:  # options only kombu knows: kombu
            import redis
            from redis.backoff import NoBackoff
            from redis.retry import Retry

            self._client = redis.Redis.from_url(
                url,
                socket_timeout=timeout,
                socket_connect_timeout=timeout,
                retry=Retry(NoBackoff(), 1),  # once, at once: a connection cut by a restart
            )

    def check(self) -> None:
        """Return once the broker answers; otherwise raise the driver's error."""
        if self._client is not None:
            self._client.ping()
            return
        with self.app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=0, timeout=self.timeout)

    def close(self) -> None:
        """Drop the kept connection, if any."""
        if self._client is not None:
            self._client.close()
