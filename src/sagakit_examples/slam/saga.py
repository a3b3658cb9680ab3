"""The collaborative multi-robot SLAM exploration mission, as a saga definition.

Five steps, each a local transaction of one service (its own Celery queue):

1. ``allocate_robots`` (robots): reserve the robots, waiting for them up to the mission's
   ``robot_wait``; undone by releasing them.
2. ``plan_routes`` (planning): split the area into sectors and route a coverage path
   through each, around obstacles; undone by discarding the plan.
3. ``explore`` (exploration): one parallel branch per robot, each driving its route and
   building a local occupancy grid; undone by recalling the robot and dropping its scans.
4. ``integrate_maps`` (mapping): fuse the local grids, assess the map against the ground
   truth and render it; undone by deleting the map.
5. ``release_robots`` (robots): give the robots back. Retriable: once the map exists the
   mission cannot fail any more, so this step is retried until it succeeds.
"""

from __future__ import annotations

from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from sagakit import RetryPolicy, Saga, Step, StepKind

from .faults import Faults, lift_top_level
from .planning import MIN_STRIP_WIDTH

STEP_RETRY = RetryPolicy(max_attempts=3, initial_interval=0.2, backoff=2.0, max_interval=2.0)
WAIT_RETRY = RetryPolicy(max_attempts=None, initial_interval=0.2, backoff=1.5, max_interval=2.0)
"""allocate_robots asks again until the mission's own robot_wait deadline has passed."""
UNDO_RETRY = RetryPolicy(max_attempts=5, initial_interval=0.2, backoff=2.0, max_interval=2.0)
STEP_TIMEOUT = 120.0
MISSION_TIMEOUT = 900.0
MAX_ROBOT_WAIT = 600.0
"""Longest a mission may wait for robots, leaving time within MISSION_TIMEOUT for the rest."""


class MissionInput(BaseModel):
    """Parameters of one exploration mission.

    ``fail_at`` and ``fail_rate`` are also accepted at the top level (as the CLI's
    ``--fail-at`` / ``--fail-rate`` send them) and moved into ``faults``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    robots: int = Field(ge=1, le=16, description="Robots to send, one sector each.")
    area: str = Field(
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]*$",
        description="Name of the area; it seeds the world's layout.",
    )
    seed: int = Field(default=0, ge=0, le=2**32 - 1, description="World and sensor-noise seed.")
    width: int = Field(default=80, ge=20, le=400, description="World width in cells.")
    height: int = Field(default=60, ge=20, le=400, description="World height in cells.")
    robot_wait: float = Field(
        default=0.0,
        ge=0.0,
        le=MAX_ROBOT_WAIT,
        description="Seconds to wait for enough free robots before giving up (0: at once).",
    )
    faults: Faults = Field(default_factory=Faults, description="Failures to inject.")

    @model_validator(mode="before")
    @classmethod
    def _lift_faults(cls, data: Any) -> Any:
        return lift_top_level(data)

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if (self.width - 2) // self.robots < MIN_STRIP_WIDTH:
            raise ValueError(
                f"{self.robots} robots need a world at least "
                f"{self.robots * MIN_STRIP_WIDTH + 2} cells wide"
            )
        beyond = sorted(i for i in self.faults.branches() if i >= self.robots)
        if beyond:
            raise ValueError(
                f"faults name explore[{beyond[0]}] but a mission of "
                f"{self.robots} robots has branches explore[0..{self.robots - 1}]"
            )
        return self


def _step(name: str, action: str, compensation: str | None, queue: str, **options: Any) -> Step:
    values: dict[str, Any] = {
        "retry": STEP_RETRY,
        "compensation_retry": UNDO_RETRY,
        "timeout": STEP_TIMEOUT,
        **options,
    }
    return Step(name, action=action, compensation=compensation, queue=queue, **values)


mission = Saga(
    "slam",
    [
        _step("allocate_robots", "robots.allocate", "robots.release", "robots", retry=WAIT_RETRY),
        _step("plan_routes", "planning.plan", "planning.discard_plan", "planning"),
        _step(
            "explore",
            "exploration.explore",
            "exploration.abort",
            "exploration",
            for_each="allocate_robots.robots",
        ),
        _step("integrate_maps", "mapping.integrate", "mapping.rollback", "mapping"),
        _step("release_robots", "robots.return", None, "robots", kind=StepKind.RETRIABLE),
    ],
    version=1,
    timeout=MISSION_TIMEOUT,
    input_model=MissionInput,
    description="Collaborative multi-robot SLAM exploration: allocate robots, plan routes, "
    "explore in parallel, integrate the maps, release the robots.",
)
