"""Step messages to the broker, and what the sweeper asks of the broker.

Messages are built by Celery's own message factory (protocol 2), so any Celery worker
consumes them, and go straight to each queue by name:

- `RedisDispatcher` (a Redis broker): a transition's messages and its event-stream entries
  in one pipelined round trip on a client kept for the process, the message envelope being
  the one kombu's Redis transport writes (``LPUSH`` of its JSON to the queue's list);
- `CeleryDispatcher` (any other broker): kombu's producer, batched where the transport can.

A step whose task is an existing Celery task (`Step.args`) is sent as that task would be
sent by its own callers: its own kwargs, no time limits in the message (the task's own
apply), and the step's ids in `messages.STEP_HEADER`.

A step's timeout travels in a header (`messages.TIMEOUT_HEADER`): the worker's heartbeat
reports it with each running attempt, and the sweeper times out an attempt that overruns.
With ``time_limits`` the message also carries Celery's soft limit (the timeout) and hard
limit (the timeout plus twice the grace), so the pool raises SoftTimeLimitExceeded in the
step and kills a process that ignores it; each limit costs the worker timers per task.
With tracing on, the trace context travels in the ``traceparent`` header (`tracing`).
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from ..journal import Entry
from ..messages import (
    SIGNATURE_HEADER,
    STATE_HEADER,
    STEP_HEADER,
    TIMEOUT_HEADER,
    OutboxMessage,
    signature,
    signed_kwargs,
)
from ..streams.codec import encode

logger = logging.getLogger(__name__)

_NO_CALLBACKS = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}

EPOCH_KEY = "sagakit:broker-epoch"
"""A key kept in the broker's Redis database beside the queues: when it is gone, so are the
queued messages. Its value is the epoch second from which the queues hold what was sent:
whoever sends first into an emptied broker (a sender, or a sweeper) sets it (``SET NX``) to
the time its messages' rows were marked sent, so the messages sent before it were lost and
those sent since were not."""


class CeleryDispatcher:
    """Sends by task name, so the orchestrator never imports service code."""

    publishes_events = False

    def __init__(
        self,
        app: Any,
        *,
        time_limits: bool = False,
        grace: float = 5.0,
        key: bytes | None = None,
    ) -> None:
        self.app = app
        self.time_limits = time_limits
        self.grace = grace
        self.key = key
        """`Settings.message_key`: when set, every message carries its SIGNATURE_HEADER."""

    def sign(self, headers: dict[str, Any], m: OutboxMessage, kwargs: Any) -> None:
        """Add the message's signature to its headers, when the deployment has a key."""
        if self.key is not None:
            headers[SIGNATURE_HEADER] = signature(self.key, m.task_id, kwargs, m.state)

    def task_message(self, m: OutboxMessage) -> tuple[dict[str, Any], dict[str, Any], Any]:
        """Celery's (headers, properties, body) of one step message."""
        limits: dict[str, Any] = {}
        if self.time_limits and m.timeout is not None and m.call is None:
            limits = {"soft_time_limit": m.timeout, "time_limit": m.timeout + 2 * self.grace}
        kwargs = body_kwargs(m)
        headers, properties, body, _ = self.app.amqp.create_task_message(
            m.task_id,
            m.task_name,
            (),
            kwargs,
            ignore_result=True,
            kwargsrepr=repr(kwargs),
            argsrepr="()",
            **limits,
        )
        headers.update(custom_headers(m))
        self.sign(headers, m, signed_kwargs(m.kwargs, m.call))
        return headers, properties, body

    def send(
        self,
        messages: Sequence[OutboxMessage],
        entries: Sequence[Entry] = (),
        *,
        sent_at: datetime | None = None,
    ) -> list[OutboxMessage]:
        """Publish the messages; return them all if the broker refused any."""
        if not messages:
            return []
        amqp = self.app.amqp
        try:
            with self.app.producer_or_acquire() as producer:
                batch = getattr(producer, "batch", None)
                with batch() if batch is not None else contextlib.nullcontext():
                    for m in messages:
                        headers, properties, body = self.task_message(m)
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


class RedisDispatcher(CeleryDispatcher):
    """Messages and event-stream entries to Redis in one round trip (see the module doc)."""

    def __init__(
        self,
        app: Any,
        *,
        stream: str | None = None,
        maxlen: int = 100_000,
        time_limits: bool = False,
        grace: float = 5.0,
        key: bytes | None = None,
    ) -> None:
        super().__init__(app, time_limits=time_limits, grace=grace, key=key)
        import redis

        self.client = redis.Redis.from_url(
            str(app.conf.broker_url), socket_timeout=2, socket_connect_timeout=2
        )
        self.stream = stream
        self.maxlen = maxlen
        self.publishes_events = stream is not None
        from celery.utils.nodenames import anon_nodename

        self.origin = anon_nodename()

    def envelope(self, m: OutboxMessage) -> str:
        """The JSON kombu's Redis transport would push for `m`: Celery's protocol 2 message
        (the headers, properties and body `task_message` gives), its body in base64.

        Built here rather than through Celery's message factory and kombu's serializer
        registry, which cost 0.3 ms per message on this path (docs/architecture.md, "Costs");
        a test holds the two to the same message.
        """
        kwargs = body_kwargs(m)
        limits: list[float | None] = [None, None]
        if self.time_limits and m.timeout is not None and m.call is None:
            limits = [m.timeout + 2 * self.grace, m.timeout]
        headers: dict[str, Any] = {
            "lang": "py",
            "task": m.task_name,
            "id": m.task_id,
            "shadow": None,
            "eta": None,
            "expires": None,
            "group": None,
            "group_index": None,
            "retries": 0,
            "timelimit": limits,
            "root_id": m.task_id,
            "parent_id": None,
            "argsrepr": "()",
            "kwargsrepr": repr(kwargs),
            "origin": self.origin,
            "ignore_result": True,
            "replaced_task_nesting": 0,
            "stamped_headers": None,
            "stamps": {},
            **custom_headers(m),
        }
        self.sign(headers, m, signed_kwargs(m.kwargs, m.call))
        body = json.dumps([[], kwargs, _NO_CALLBACKS], separators=(",", ":"))
        return json.dumps(
            {
                "body": base64.b64encode(body.encode()).decode(),
                "content-encoding": "utf-8",
                "content-type": "application/json",
                "headers": headers,
                "properties": {
                    "correlation_id": m.task_id,
                    "reply_to": "",
                    "delivery_mode": 2,
                    "delivery_info": {"exchange": "", "routing_key": m.queue},
                    "priority": 0,
                    "body_encoding": "base64",
                    "delivery_tag": str(uuid.uuid4()),
                },
            }
        )

    def send(
        self,
        messages: Sequence[OutboxMessage],
        entries: Sequence[Entry] = (),
        *,
        sent_at: datetime | None = None,
    ) -> list[OutboxMessage]:
        """Push the messages (and append the entries to the stream) in one round trip; with
        the messages, set the broker's epoch marker if it is gone (see `EPOCH_KEY`)."""
        if not messages and not (entries and self.stream):
            return []
        pipe = self.client.pipeline(transaction=False)
        if messages:
            at = (sent_at or datetime.now(UTC)).timestamp()
            pipe.set(EPOCH_KEY, f"{at:.6f}", nx=True)
        for m in messages:
            pipe.lpush(m.queue, self.envelope(m))
        if self.stream is not None:
            for entry in entries:
                fields: Any = encode(entry)
                pipe.xadd(self.stream, fields, maxlen=self.maxlen, approximate=True)
        try:
            pipe.execute()
        except Exception as exc:
            logger.warning("broker refused %d messages: %s", len(messages), exc)
            return list(messages)
        return []


def body_kwargs(m: OutboxMessage) -> dict[str, Any]:
    """The kwargs the task is called with: an existing task's own, or the step's."""
    return dict(m.call) if m.call is not None else dict(m.kwargs)


def custom_headers(m: OutboxMessage) -> dict[str, Any]:
    """sagakit's headers of one step message."""
    headers: dict[str, Any] = {}
    if m.timeout is not None:
        headers[TIMEOUT_HEADER] = m.timeout
    if m.state is not None:
        headers[STATE_HEADER] = m.state
    if m.call is not None:
        headers[STEP_HEADER] = dict(m.kwargs)
    if m.trace is not None:
        headers.update(m.trace)
    return headers


def dispatcher_for(
    app: Any,
    *,
    redis_url: str | None,
    stream: str,
    maxlen: int,
    time_limits: bool,
    grace: float,
    key: bytes | None = None,
) -> CeleryDispatcher:
    """The dispatcher for this broker; with the event stream on the broker's own Redis
    database, it publishes the transitions' entries too."""
    broker = str(app.conf.broker_url or "")
    if broker.split("://", 1)[0] not in ("redis", "rediss"):
        return CeleryDispatcher(app, time_limits=time_limits, grace=grace, key=key)
    same = redis_url is not None and redis_url.rstrip("/") == broker.rstrip("/")
    return RedisDispatcher(
        app,
        stream=stream if same else None,
        maxlen=maxlen,
        time_limits=time_limits,
        grace=grace,
        key=key,
    )


class BrokerWatch:
    """Tells the sweeper how deep a queue is and since when the broker holds what was sent.

    On Redis, the epoch marker (`EPOCH_KEY`) lives beside the queues: a restart without
    persistence or a flush removes both, and the next send or sweep puts it back with the
    time from which the queues are whole. The in-process broker of the embedded default
    starts empty with each process. Other brokers (RabbitMQ's durable queues) keep messages.
    """

    def __init__(self, app: Any) -> None:
        self.app = app
        self.born = datetime.now(UTC)
        url = str(app.conf.broker_url or "")
        self.kind = url.split("://", 1)[0]
        self._client: Any = None
        if self.kind in ("redis", "rediss"):
            import redis

            self._client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)

    def epoch(self) -> datetime | None:
        """The time from which the broker holds every message sent: those sent before it
        and not yet taken were lost. None when the broker keeps its messages or cannot be
        asked now."""
        if self.kind == "memory":
            return self.born  # this process's broker began empty
        if self._client is None:
            return None
        try:
            pipe = self._client.pipeline(transaction=False)
            pipe.set(EPOCH_KEY, f"{datetime.now(UTC).timestamp():.6f}", nx=True)
            pipe.get(EPOCH_KEY)
            _, value = pipe.execute()
        except Exception:
            return None  # cannot tell: the next sweep asks again
        try:
            return datetime.fromtimestamp(float(value), UTC)
        except (TypeError, ValueError):
            return datetime.fromtimestamp(0, UTC)  # a marker of an earlier version: whole

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
