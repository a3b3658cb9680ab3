"""CeleryDispatcher: outbox messages become Celery messages on the step's queue."""

from __future__ import annotations

from typing import Any

from ..store.records import OutboxMessage


class CeleryDispatcher:
    """Sends by task name, so the orchestrator never imports service code."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def send(self, message: OutboxMessage) -> None:
        """Publish one message with its deterministic task id."""
        options: dict[str, Any] = {}
        if message.time_limit is not None:
            options["time_limit"] = message.time_limit
            options["soft_time_limit"] = max(message.time_limit - 1.0, 0.5)
        self.app.send_task(
            message.task_name,
            kwargs=message.kwargs,
            task_id=message.task_id,
            queue=message.queue,
            routing_key=message.queue,
            **options,
        )
