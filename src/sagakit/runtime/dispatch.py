"""Step messages to the broker, and what the sweeper asks of the broker.

`CeleryDispatcher` publishes a transition's messages in one round trip where the transport
batches (kombu's `Producer.batch`, Redis), straight to each queue by name, built by
Celery's own message factory (protocol 2) so any Celery worker consumes them.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from ..messages import OutboxMessage

logger = logging.getLogger(__name__)

EPOCH_KEY = "sagakit:broker-epoch"
"""A key kept in the broker's Redis database: when it is gone, so are the queued messages."""


class CeleryDispatcher:
    """Sends by task name, so the orchestrator never imports service code."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def send(self, messages: Sequence[OutboxMessage]) -> list[OutboxMessage]:
        """Publish the messages; return them all if the broker refused any."""
        if not messages:
            return []
        amqp = self.app.amqp
        try:
            with self.app.producer_or_acquire() as producer:
                batch = getattr(producer, "batch", None)
                with batch() if batch is not None else contextlib.nullcontext():
                    for m in messages:
                        headers, properties, body, _ = amqp.create_task_message(
                            m.task_id,
                            m.task_name,
                            (),
                            dict(m.kwargs),
                            time_limit=m.time_limit,
                            soft_time_limit=m.soft_time_limit,
                            ignore_result=True,
                        )
                        producer.publish(
                            body,
                            exchange="",
                            routing_key=m.queue,
                            serializer="json",
                            headers=headers,
                            delivery_mode=2,
                            declare=[amqp.queues[m.queue]],
                            retry=False,
                            **properties,
                        )
        except Exception as exc:
            logger.warning("broker refused %d messages: %s", len(messages), exc)
            return list(messages)
        return []


class BrokerWatch:
    """Tells the sweeper how deep a queue is and whether the broker lost its messages.

    On Redis, a marker key lives beside the queues: a restart without persistence or a
    flush removes both, and the first sweeper to see the marker gone puts it back and
    re-sends what no worker holds. The in-process broker of the embedded default starts
    empty with each process. Other brokers (RabbitMQ's durable queues) keep messages.
    """

    def __init__(self, app: Any) -> None:
        self.app = app
        self.born = datetime.now(UTC)
        url = str(app.conf.broker_url or "")
        self.kind = url.split("://", 1)[0]
        self._client: Any = None
        self._first = True
        if self.kind in ("redis", "rediss"):
            import redis

            self._client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)

    def lost(self) -> datetime | None:
        """Once the broker has lost its queued messages: before when they were sent."""
        first, self._first = self._first, False
        if self.kind == "memory":
            return self.born if first else None  # this process's broker began empty
        if self._client is None:
            return None
        try:
            gone = self._client.set(EPOCH_KEY, uuid.uuid4().hex, nx=True)
        except Exception:
            return None  # cannot tell: the next sweep asks again
        return datetime.now(UTC) if gone else None

    def depth(self, queue: str) -> int | None:
        """Messages waiting in `queue`; None when the broker cannot be asked."""
        from kombu.exceptions import ChannelError

        try:
            with self.app.connection_for_read() as conn:
                declared = conn.default_channel.queue_declare(queue=queue, passive=True)
                return int(declared.message_count)
        except ChannelError:
            return 0  # no such queue: nothing waits in it
        except Exception:
            return None
