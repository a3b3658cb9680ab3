"""What the state machine knows about a saga: a small head, and one record per step instance.

The head (`SagaState`) holds the facts `decide` needs about the saga as a whole, and stays
the same size however many steps the saga has or how wide it fans out: per-instance facts
live in `StepState` records, of which a transition reads and writes only the few it touches
(see `core.machine.needs`). Step outputs are not part of either: they are data, stored once
with their instance in the saga log, and only the lists a `for_each` will fan out over are
kept in the head until their stage begins.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

JSON = Any

_INSTANCE = re.compile(r"^(?P<step>[a-z][a-z0-9_]*)(?:\[(?P<index>\d+)\])?$")


class SagaStatus(StrEnum):
    """Where a saga stands; `failed` always means an operator is needed."""

    PENDING = "pending"
    RUNNING = "running"
    COMPENSATING = "compensating"
    COMPLETED = "completed"
    COMPENSATED = "compensated"
    FAILED = "failed"

    @property
    def settled(self) -> bool:
        """True when nothing more happens without an operator."""
        return self in (SagaStatus.COMPLETED, SagaStatus.COMPENSATED, SagaStatus.FAILED)


SETTLED_STATUSES: tuple[str, ...] = tuple(s.value for s in SagaStatus if s.settled)
"""Status words of sagas that nothing advances without an operator."""

ACTIVE_STATUSES: tuple[str, ...] = tuple(s.value for s in SagaStatus if not s.settled)
"""Status words of sagas that are still under way."""


class StepStatus(StrEnum):
    """Where one step instance stands (``pending``: not reached yet, for the read side)."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    COMPENSATING = "compensating"
    COMPENSATED = "compensated"
    COMPENSATION_FAILED = "compensation_failed"


BUSY_STATUSES: tuple[str, ...] = (StepStatus.RUNNING.value, StepStatus.COMPENSATING.value)
"""Instances with an action or a compensation outstanding."""


def instance_name(step: str, index: int | None = None) -> str:
    """The name of a step instance: ``explore`` or, for fan-out item 2, ``explore[2]``."""
    return step if index is None else f"{step}[{index}]"


def parse_instance(name: str) -> tuple[str, int | None]:
    """Split an instance name into its step and index. Raises ValueError if malformed."""
    found = _INSTANCE.match(name)
    if found is None:
        raise ValueError(f"{name!r} is not a step instance name")
    index = found.group("index")
    return found.group("step"), None if index is None else int(index)


@dataclass(frozen=True, slots=True)
class StepState:
    """One step instance: a plain step, or one item of a fanned-out step."""

    name: str
    step: str
    stage: int
    index: int | None = None
    item: JSON = None
    status: StepStatus = StepStatus.RUNNING
    attempt: int = 1
    attempt_base: int = 0
    """Attempts made before the last operator retry; the budget counts from here."""
    compensation_attempt: int = 0
    compensation_base: int = 0
    order: int | None = None
    """For a compensatable instance that took effect (or may have): its place in undo order.

    Set only while the instance waits to be undone, so "the next one to undo" is the
    instance with the highest order (the saga log answers that with one index lookup).
    """
    maybe_effect: bool = False
    """An attempt timed out, so the step may have taken effect even if it then failed."""
    error: str | None = None

    @property
    def busy(self) -> bool:
        """True while an action or a compensation of this instance is outstanding."""
        return self.status in (StepStatus.RUNNING, StepStatus.COMPENSATING)


@dataclass(frozen=True, slots=True)
class SagaState:
    """The head of one saga: everything `decide` needs that is not per instance."""

    saga_id: str
    saga_type: str
    definition_version: int
    status: SagaStatus = SagaStatus.PENDING
    stage: int = -1
    seq: int = 0
    """Counter of instances that took effect, giving each its undo order."""
    pivot_passed: bool = False
    reason: str | None = None
    failed_step: str | None = None
    cause: str | None = None
    """Why compensation began; kept when a compensation failure overwrites `reason`."""
    cause_step: str | None = None
    open: int = 0
    """Instances of the current stage that have not succeeded yet."""
    busy: int = 0
    """Instances with an action or a compensation outstanding."""
    sources: Mapping[str, JSON] = field(default_factory=dict)
    """Values a later ``for_each`` will fan out over, by path, until their stage begins."""
