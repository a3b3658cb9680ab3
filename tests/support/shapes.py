"""Random saga definitions for property tests, with the facts a driver checks against."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

from sagakit.core.definition import Parallel, RetryPolicy, Saga, Step, StepKind


@dataclass
class Shape:
    """A generated definition with the facts the driver checks against."""

    saga: Saga
    input: dict[str, Any]
    stage_of: dict[str, int]
    pivot_stage: int | None

    def expected_instances(self, stage: int) -> int | None:
        """How many instances stage `stage` makes; None when its fan-out cannot resolve."""
        total = 0
        for step in self.saga.stage_steps(stage):
            if step.for_each is None:
                total += 1
            elif isinstance(self.input.get("items"), list):
                total += len(self.input["items"])
            else:
                return None
        return total

    def kind(self, instance: str) -> StepKind:
        return self.saga.step(instance).kind

    def compensatable(self, instance: str) -> bool:
        return self.kind(instance) is StepKind.COMPENSATABLE


@st.composite
def shapes(draw: st.DrawFn) -> Shape:
    counter = iter(range(100))

    def make(kind: StepKind, fan_out: bool) -> Step:
        name = f"s{next(counter)}"
        retry = RetryPolicy(
            max_attempts=draw(st.integers(1, 3)),
            initial_interval=1.0,
            non_retryable=("ValueError",),
        )
        options: dict[str, Any] = {
            "retry": retry,
            "kind": kind,
            "queue": "q",
            "for_each": "input.items" if fan_out and draw(st.integers(0, 2)) == 0 else None,
        }
        if kind is StepKind.COMPENSATABLE:
            options["compensation"] = f"svc.undo_{name}"
            options["compensation_retry"] = RetryPolicy(max_attempts=draw(st.integers(1, 3)))
        return Step(name, action=f"svc.{name}", **options)

    stages: list[Step | Parallel] = []
    for index in range(draw(st.integers(1, 5))):
        width = draw(st.sampled_from([1, 1, 2, 3]))
        if width == 1:
            stages.append(make(StepKind.COMPENSATABLE, True))
        else:
            stages.append(
                Parallel(f"g{index}", [make(StepKind.COMPENSATABLE, True) for _ in range(width)])
            )
    pivot_stage = None
    if draw(st.booleans()):
        pivot_stage = len(stages)
        stages.append(make(StepKind.PIVOT, False))
        stages.extend(make(StepKind.RETRIABLE, True) for _ in range(draw(st.integers(0, 2))))
    saga = Saga("prop", stages)
    data: dict[str, Any] = {}
    if draw(st.integers(0, 4)):  # now and then the list to fan out over is missing
        data["items"] = draw(st.lists(st.integers(0, 9), max_size=3))
    stage_of = {step.name: i for i in range(len(stages)) for step in saga.stage_steps(i)}
    return Shape(saga, data, stage_of, pivot_stage)
