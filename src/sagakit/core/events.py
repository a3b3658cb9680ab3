"""Events (what happened, past tense), commands (what to do) and decisions."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from .state import JSON, SagaState, StepState

Direction = Literal["action", "compensation"]


@dataclass(frozen=True, slots=True)
class SagaStarted:
    """The saga was created and may begin; `input` is its validated input."""

    input: Mapping[str, JSON] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class StepSucceeded:
    """An action attempt returned."""

    step: str
    attempt: int
    output: JSON = None


@dataclass(frozen=True, slots=True)
class StepFailed:
    """An action attempt raised; `retryable` is False for NonRetryableError and friends."""

    step: str
    attempt: int
    error: str
    retryable: bool = True
    error_type: str = ""
    """Exception class name, checked against the step's `non_retryable` list."""


@dataclass(frozen=True, slots=True)
class StepTimedOut:
    """An action attempt outlived its timeout; it may still have taken effect."""

    step: str
    attempt: int
    reason: str = ""
    """What was seen: the worker died, it ran past its timeout."""


@dataclass(frozen=True, slots=True)
class CompensationSucceeded:
    """A compensation attempt returned."""

    step: str
    attempt: int


@dataclass(frozen=True, slots=True)
class CompensationFailed:
    """A compensation attempt raised or timed out."""

    step: str
    attempt: int
    error: str


@dataclass(frozen=True, slots=True)
class CancelRequested:
    """Someone asked to stop the saga and undo what it did."""

    reason: str


@dataclass(frozen=True, slots=True)
class DeadlineExceeded:
    """The saga's deadline passed before it finished."""


@dataclass(frozen=True, slots=True)
class RetryRequested:
    """An operator asked a failed saga to resume where it stopped."""


@dataclass(frozen=True, slots=True)
class CompensationResolved:
    """An operator undid by hand what a step did, after its compensation failed for good
    (the remote system is gone): the instance counts as compensated."""

    step: str
    reason: str
    """Why, and what was done."""
    by: str
    """Who recorded it."""


Event = (
    SagaStarted
    | StepSucceeded
    | StepFailed
    | StepTimedOut
    | CompensationSucceeded
    | CompensationFailed
    | CancelRequested
    | DeadlineExceeded
    | RetryRequested
    | CompensationResolved
)
Outcome = StepSucceeded | StepFailed | StepTimedOut | CompensationSucceeded | CompensationFailed
"""Events that report what one attempt of one step instance did."""


@dataclass(frozen=True, slots=True)
class RunTask:
    """Send one attempt of an action or a compensation to its service's queue."""

    step: str
    direction: Direction
    attempt: int
    task: str
    queue: str
    position: int
    delay: float = 0.0
    timeout: float | None = None
    item: JSON = None


@dataclass(frozen=True, slots=True)
class Needs:
    """Which step instances `decide` must be given for an event (see `needs`)."""

    names: tuple[str, ...] = ()
    """Instances by name: the one an outcome reports on."""
    undo_top: bool = False
    """The instance waiting to be undone with the highest order, if any."""
    failed: bool = False
    """Every instance whose action or compensation failed (an operator's retry)."""


@dataclass(frozen=True, slots=True)
class Decision:
    """The new head, the instances made or changed, and the commands to carry out.

    `ignored` marks an event that changes nothing (a stale or duplicate outcome).
    """

    state: SagaState
    created: tuple[StepState, ...] = ()
    updated: tuple[StepState, ...] = ()
    commands: tuple[RunTask, ...] = ()
    ignored: bool = False

    @property
    def steps(self) -> tuple[StepState, ...]:
        """Every instance this decision wrote."""
        return self.created + self.updated
