"""Plain records read from and written to the saga log."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ..core.machine import SagaState


@dataclass(frozen=True, slots=True)
class SagaRecord:
    """One saga as stored: its core state plus bookkeeping."""

    saga_id: str
    saga_type: str
    definition_version: int
    status: str
    input: dict[str, Any]
    state: SagaState
    reason: str | None
    failed_step: str | None
    idempotency_key: str | None
    version: int
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    deadline_at: datetime | None


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    """One attempt of an action or a compensation."""

    saga_id: str
    step: str
    direction: str
    attempt: int
    task_id: str
    task_name: str
    queue: str
    status: str
    worker: str | None
    input: Any
    output: Any
    error: str | None
    traceback: str | None
    timeout: float | None
    scheduled_at: datetime
    not_before: datetime
    started_at: datetime | None
    deadline_at: datetime | None
    finished_at: datetime | None


@dataclass(frozen=True, slots=True)
class TransitionRecord:
    """One entry of the append-only history."""

    id: int
    saga_id: str
    event: str
    from_status: str | None
    to_status: str | None
    step: str | None
    attempt: int | None
    detail: dict[str, Any] | None
    at: datetime


@dataclass(frozen=True, slots=True)
class OutboxMessage:
    """A Celery message to send: written in the transition's transaction, sent after it."""

    saga_id: str
    task_id: str
    task_name: str
    queue: str
    kwargs: dict[str, Any]
    time_limit: float | None
    not_before: datetime


@dataclass(frozen=True, slots=True)
class Claim:
    """What a worker learns when it claims an attempt it received."""

    saga_id: str
    step: str
    direction: str
    attempt: int
    accepted: bool
    status: str
