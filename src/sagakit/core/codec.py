"""SagaState <-> JSON-able dicts, for the saga log (pure)."""

from __future__ import annotations

from dataclasses import asdict, fields, replace
from typing import Any

from .machine import SagaState, SagaStatus, StepState, StepStatus

_STEP_FIELDS = frozenset(f.name for f in fields(StepState))


def state_to_dict(state: SagaState) -> dict[str, Any]:
    """Return a JSON-able snapshot of `state`."""
    data = asdict(replace(state, input={}))
    data["input"] = dict(state.input)
    return data


def state_from_dict(data: dict[str, Any]) -> SagaState:
    """Rebuild a SagaState from `state_to_dict` output."""
    steps = tuple(
        StepState(
            **{
                **{k: v for k, v in raw.items() if k in _STEP_FIELDS},
                "status": StepStatus(raw["status"]),
            }
        )
        for raw in data.get("steps", ())
    )
    return SagaState(
        saga_id=data["saga_id"],
        saga_type=data["saga_type"],
        version=data["version"],
        input=data.get("input") or {},
        status=SagaStatus(data["status"]),
        stage=data.get("stage", -1),
        steps=steps,
        seq=data.get("seq", 0),
        pivot_passed=data.get("pivot_passed", False),
        reason=data.get("reason"),
        failed_step=data.get("failed_step"),
        cause=data.get("cause"),
        cause_step=data.get("cause_step"),
    )
