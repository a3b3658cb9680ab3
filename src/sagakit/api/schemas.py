"""HTTP request and response models (the boundary only; the core stays dataclasses)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..core.state import SagaStatus

Status = SagaStatus
"""A saga's status word."""


class StartSaga(BaseModel):
    """Start a saga of `type` with `input` (validated against that type's input model)."""

    model_config = ConfigDict(extra="forbid")
    type: str = Field(min_length=1, max_length=64, examples=["slam"])
    input: dict[str, Any] = Field(
        default_factory=dict, examples=[{"robots": 3, "area": "warehouse"}]
    )


class Started(BaseModel):
    """Where to follow the saga; `created` is false when the idempotency key was seen."""

    id: str
    url: str
    events_url: str
    created: bool
    status: Status


class CancelRequest(BaseModel):
    """Why the saga is cancelled (recorded with it)."""

    model_config = ConfigDict(extra="forbid")
    reason: str = Field(default="cancelled over HTTP", min_length=1, max_length=500)


class SagaSummary(BaseModel):
    """A saga in a listing."""

    id: str
    type: str
    definition_version: int
    status: Status
    reason: str | None
    failed_step: str | None
    created_at: str
    updated_at: str
    finished_at: str | None
    duration: float | None


class Attempt(BaseModel):
    """One attempt of an action or a compensation."""

    attempt: int
    direction: Literal["action", "compensation"]
    status: str
    task_id: str
    task_name: str
    queue: str
    worker: str | None
    scheduled_at: str | None
    not_before: str | None
    started_at: str | None
    finished_at: str | None
    duration: float | None
    output: Any = None
    error: str | None
    traceback: str | None


class StepView(BaseModel):
    """A step instance with its attempts and compensations."""

    name: str
    step: str
    index: int | None
    stage: int
    status: str
    item: Any = None
    output: Any = None
    error: str | None
    attempts: list[Attempt]
    compensations: list[Attempt]


class Transition(BaseModel):
    """One history entry."""

    id: int
    event: str
    step: str | None
    attempt: int | None
    from_: str | None = Field(alias="from")
    to: str | None
    at: str | None
    detail: dict[str, Any] | None


class SagaDetail(SagaSummary):
    """Everything about one saga."""

    input: dict[str, Any]
    idempotency_key: str | None
    deadline_at: str | None
    steps: list[StepView]
    history: list[Transition]


class SagaPage(BaseModel):
    """One page of sagas, newest first; pass `next_cursor` as `cursor` for the next."""

    items: list[SagaSummary]
    limit: int
    next_cursor: str | None


class Health(BaseModel):
    """Reachability of the saga log and the broker."""

    status: Literal["ok", "degraded"]
    database: str
    broker: str


class Problem(BaseModel):
    """An error: `detail` says what went wrong, `field` which input when there is one."""

    detail: str
    field: str | None = None
