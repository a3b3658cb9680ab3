"""Core records <-> flat, JSON-able rows (pure): the saga log's columns, named once."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .state import SagaState, SagaStatus, StepState, StepStatus

HEAD_COLUMNS = (
    "status",
    "stage",
    "seq",
    "pivot_passed",
    "reason",
    "failed_step",
    "cause",
    "cause_step",
    "open_steps",
    "busy_steps",
    "sources",
)
"""Columns of the saga row that a transition may change."""

STEP_COLUMNS = (
    "name",
    "step",
    "stage",
    "idx",
    "item",
    "status",
    "attempt",
    "attempt_base",
    "comp_attempt",
    "comp_base",
    "ord",
    "maybe_effect",
    "error",
)
"""Columns of a step row that hold the instance's state."""

MESSAGE_COLUMNS = (
    "task_id",
    "task_name",
    "queue",
    "not_before",
    "sent_at",
    "send_count",
    "carrier",
)
"""Columns of a step row that hold its current attempt's message (the outbox); `carrier`:
the task id of the delivery that runs the attempt in place of its own message (an eager
saga's next step, `runtime.eager`)."""

HISTORY_COLUMNS = (
    "saga_id",
    "event",
    "from_status",
    "to_status",
    "step",
    "attempt",
    "detail",
    "at",
    "started_at",
)
"""Columns of a history entry as a transition writes it (the log numbers it, ``id``)."""


def head_row(state: SagaState) -> dict[str, Any]:
    """The saga row's state columns for `state`."""
    return {
        "status": state.status.value,
        "stage": state.stage,
        "seq": state.seq,
        "pivot_passed": state.pivot_passed,
        "reason": state.reason,
        "failed_step": state.failed_step,
        "cause": state.cause,
        "cause_step": state.cause_step,
        "open_steps": state.open,
        "busy_steps": state.busy,
        "sources": dict(state.sources) or None,
    }


def head_from(row: Mapping[str, Any]) -> SagaState:
    """Rebuild a head from a saga row (any mapping with the saga columns)."""
    return SagaState(
        saga_id=row["saga_id"],
        saga_type=row["saga_type"],
        definition_version=row["definition_version"],
        status=SagaStatus(row["status"]),
        stage=row["stage"],
        seq=row["seq"],
        pivot_passed=bool(row["pivot_passed"]),
        reason=row["reason"],
        failed_step=row["failed_step"],
        cause=row["cause"],
        cause_step=row["cause_step"],
        open=row["open_steps"],
        busy=row["busy_steps"],
        sources=row["sources"] or {},
    )


def step_row(st: StepState) -> dict[str, Any]:
    """A step row's state columns for `st`."""
    return {
        "name": st.name,
        "step": st.step,
        "stage": st.stage,
        "idx": st.index,
        "item": st.item,
        "status": st.status.value,
        "attempt": st.attempt,
        "attempt_base": st.attempt_base,
        "comp_attempt": st.compensation_attempt,
        "comp_base": st.compensation_base,
        "ord": st.order,
        "maybe_effect": st.maybe_effect,
        "error": st.error,
    }


def step_from(row: Mapping[str, Any]) -> StepState:
    """Rebuild an instance from a step row."""
    return StepState(
        name=row["name"],
        step=row["step"],
        stage=row["stage"],
        index=row["idx"],
        item=row["item"],
        status=StepStatus(row["status"]),
        attempt=row["attempt"],
        attempt_base=row["attempt_base"],
        compensation_attempt=row["comp_attempt"],
        compensation_base=row["comp_base"],
        order=row["ord"],
        maybe_effect=bool(row["maybe_effect"]),
        error=row["error"],
    )
