"""A saga's definition as columns: stages in order, a parallel group's steps and a
fan-out's branches side by side, the pivot marked, what was not reached greyed."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ...core.definition import Parallel, Saga, StepKind


@dataclass(frozen=True, slots=True)
class Node:
    """One step instance, or a step not reached yet."""

    name: str
    status: str
    """``not reached`` when the saga never got there."""
    kind: str
    task: str
    undo: str | None


@dataclass
class Column:
    """One stage: a step, a fan-out's branches, or a parallel group."""

    title: str
    kind: str
    """``step``, ``parallel`` or ``fan-out``."""
    nodes: list[Node] = field(default_factory=list)
    note: str = ""


def build(saga: Saga | None, steps: list[dict[str, Any]]) -> list[Column]:
    """The columns of `saga`, coloured by the step instances a detail view lists.

    Without the definition (a type this process does not know), the instances alone.
    """
    by_step: dict[str, list[dict[str, Any]]] = {}
    for instance in steps:
        by_step.setdefault(instance["step"], []).append(instance)
    if saga is None:
        return [
            Column(name, "step", [Node(i["name"], i["status"], "", "", None) for i in found])
            for name, found in by_step.items()
        ]
    columns = []
    for stage in saga.steps:
        members = stage.steps if isinstance(stage, Parallel) else (stage,)
        column = Column(stage.name, "parallel" if isinstance(stage, Parallel) else "step")
        for step in members:
            kind = "" if step.kind is StepKind.COMPENSATABLE else step.kind.value
            found = by_step.get(step.name, [])
            if step.for_each is not None:
                column.kind = "fan-out" if column.kind == "step" else column.kind
                column.note = f"one branch per item of {step.for_each}"
            if not found:
                column.nodes.append(
                    Node(step.name, "not reached", kind, step.action, step.compensation)
                )
            for instance in found:
                column.nodes.append(
                    Node(instance["name"], instance["status"], kind, step.action, step.compensation)
                )
        columns.append(column)
    return columns
