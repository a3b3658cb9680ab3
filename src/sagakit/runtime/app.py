"""The Celery app, configured for at-least-once delivery of saga steps.

What each setting buys, and what it costs (Celery's and kombu's docs and issue tracker agree
on these):
- ``task_acks_late``: ack after the task ran, so a worker crash redelivers it;
- ``task_reject_on_worker_lost``: a killed pool process requeues its message at once, and
  the redelivery runs (the saga log sees the same attempt still outstanding); ``sagakit
  worker``'s prefork pool notices the killed process at once (`runtime.pool`);
- ``worker_prefetch_multiplier=1``: a worker holds one unacked message per process;
- JSON only: messages carry ids and plain data, never pickles;
- ``visibility_timeout`` (Redis): an unacked message is redelivered after it, so it must
  exceed the longest step timeout, or long steps would run twice;
- no task events by default (Celery's own default): each event is one more publish per
  task (four per step with the "sent" event, about 1.8x the cost of a bare task). Flower
  turns them on in the workers it watches (``sagakit up`` and compose run it), through
  the broker, while it runs;
- no result backend: outcomes go to the saga log, not to Celery results.

On RabbitMQ (an ``amqp://`` broker URL), what Celery's docs recommend for messages that must
not be lost (`RABBITMQ`): quorum queues (durable and replicated; Celery then turns global QoS
off, which they do not support, and the prefetch stays one per process), and publisher
confirms (a send returns once the broker has the message, so a send into a broker going down
fails and the sweeper sends it again instead of it vanishing). sagakit never sends ETA or
countdown messages (a retry's delay waits in the saga log), which quorum queues would need
Celery's native delayed delivery for. A quorum queue's delivery limit (RabbitMQ's default,
or a policy) drops a message redelivered too often, e.g. one whose step keeps killing its
pool process: the sweeper re-drives it once nobody holds it and its queue is empty, and the
step's timeout and retry policy bound it.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from celery import Celery

if TYPE_CHECKING:
    from ..engine import Engine
    from ..tracing.spans import Tracing

SAGAKIT_QUEUE = "sagakit"
AMQP = ("amqp", "amqps", "pyamqp")
RABBITMQ: dict[str, Any] = {
    "task_default_queue_type": "quorum",
    "task_create_missing_queue_type": "quorum",
    "broker_transport_options": {"confirm_publish": True},
    "worker_detect_quorum_queues": True,
}
"""Celery's settings for a RabbitMQ broker (see the module docstring)."""


def make_celery(
    broker_url: str,
    *,
    visibility_timeout: float = 3600.0,
    name: str = "sagakit",
    message_key: str | None = None,
) -> Any:
    """Create the Celery app used by sagakit workers and dispatchers.

    `message_key` (default: ``SAGAKIT_MESSAGE_KEY`` from the environment) is the shared key
    of `Settings.message_key`: a service's own app, with no saga log, runs only step
    messages signed with it, and signs the outcomes it reports.
    """
    # sagakit.record_outcome is registered in every worker, whatever its step tasks are
    # (existing tasks run as steps import nothing of sagakit's tasks).
    app = Celery(name, broker=broker_url, set_as_current=False, include=["sagakit.runtime.tasks"])
    app.sagakit_message_key = message_key or os.environ.get("SAGAKIT_MESSAGE_KEY") or None
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,
        worker_prefetch_multiplier=1,
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_ignore_result=True,
        result_backend=None,
        task_default_queue=SAGAKIT_QUEUE,
        broker_transport_options={
            "visibility_timeout": int(visibility_timeout),
            # Virtual transports (the embedded memory broker) poll; the default is 1 s.
            "polling_interval": 0.01 if broker_url.startswith("memory://") else 1.0,
        },
        broker_connection_retry_on_startup=True,
        worker_send_task_events=False,
        task_send_sent_event=False,
        task_track_started=False,
        worker_hijack_root_logger=False,
        # A step that is running when the broker connection drops finishes and records its
        # outcome in the saga log; cancelling it would only force a retry.
        worker_cancel_long_running_tasks_on_connection_loss=False,
        enable_utc=True,
    )
    if broker_url.split("://", 1)[0] in AMQP:
        app.conf.update(RABBITMQ)
    return app


class EngineSlot:
    """Gives each process (each prefork child) its own Engine, built on first use."""

    def __init__(self, factory: Callable[[], Engine]) -> None:
        self._factory = factory
        self._lock = threading.Lock()
        self._engine: Engine | None = None
        self._pid = 0

    def get(self) -> Engine:
        """Return this process's engine."""
        with self._lock:
            if self._engine is None or self._pid != os.getpid():
                self._engine = self._factory()
                self._pid = os.getpid()
            return self._engine


def bind_engine(app: Any, factory: Callable[[], Engine], *, record_patience: float = 10.0) -> None:
    """Let step tasks running on `app` reach the saga log through `factory`.

    `record_patience`: seconds a worker retries an outcome while the log is unreachable
    (`Settings.record_patience`).
    """
    app.sagakit_engine = EngineSlot(factory)
    app.sagakit_record_patience = record_patience


def message_key(app: Any) -> bytes | None:
    """The shared key that signs step messages and reports on `app`, if it has one."""
    key = getattr(app, "sagakit_message_key", None)
    return key.encode() if isinstance(key, str) and key else None


def record_patience(app: Any) -> float:
    """Seconds to retry recording an outcome on `app` while the saga log is unreachable."""
    return float(getattr(app, "sagakit_record_patience", 10.0))


def engine_for(app: Any) -> Engine | None:
    """Return the engine bound to `app`, or None where the store is out of reach."""
    slot: EngineSlot | None = getattr(app, "sagakit_engine", None)
    return None if slot is None else slot.get()


def bind_tracing(app: Any, tracing: Tracing | None) -> None:
    """Have step tasks running on `app` open their spans through `tracing` (None: off)."""
    app.sagakit_tracing = tracing


def tracing_for(app: Any) -> Tracing | None:
    """The tracing bound to `app`; None when tracing is off."""
    tracing: Tracing | None = getattr(app, "sagakit_tracing", None)
    return tracing
