"""Failure injection for the SLAM mission, given as mission parameters (never code edits).

A mission's ``faults`` say where it should go wrong:

* ``fail_at``: that step's action fails for good (``explore`` alone fails its last branch
  while the other branches complete; ``explore[i]`` fails branch ``i``);
* ``fail_rate``: each action of a compensatable step fails with that probability, decided
  deterministically from the seed, the saga id and the step instance;
* ``slow``: seconds to sleep in a step before it works (capped at 30);
* ``transient``: fail the first ``k`` attempts of a step, then succeed;
* ``compensation_fail``: the step's compensation fails its first ``k`` attempts (a large
  ``k`` such as 99 exhausts the retry budget and leaves the saga ``failed``).

Business failures (``fail_at``, ``fail_rate``) raise `NonRetryableError`; the others raise
`RuntimeError`, which the step's retry policy retries. Steps call `Faults.check` inside their
local transaction, after their writes and before the commit, so a failed attempt has no effect.
"""

from __future__ import annotations

import hashlib
import re
import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from sagakit import NonRetryableError, StepContext

STEPS = ("allocate_robots", "plan_routes", "explore", "integrate_maps", "release_robots")
"""The mission's step names, in order."""
RANDOM_STEPS = STEPS[:4]
"""Steps `fail_rate` applies to: release_robots comes after the point of no return."""
MAX_SLOW = 30.0
_INSTANCE = re.compile(r"^explore\[(\d+)\]$")


def branch_of(step: str) -> int | None:
    """Return the branch index of an ``explore[i]`` instance name, else None."""
    match = _INSTANCE.match(step)
    return int(match.group(1)) if match else None


def _check_name(name: str) -> str:
    if name in STEPS or branch_of(name) is not None:
        return name
    raise ValueError(f"unknown step {name!r}; valid steps: {', '.join(STEPS)}, explore[<n>]")


class Faults(BaseModel):
    """What should go wrong during a mission; the defaults inject nothing."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    fail_at: str | None = None
    fail_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    slow: dict[str, float] = Field(default_factory=dict)
    transient: dict[str, int] = Field(default_factory=dict)
    compensation_fail: dict[str, int] = Field(default_factory=dict)

    @field_validator("fail_at")
    @classmethod
    def _valid_fail_at(cls, value: str | None) -> str | None:
        return None if value is None else _check_name(value)

    @field_validator("slow")
    @classmethod
    def _valid_slow(cls, value: dict[str, float]) -> dict[str, float]:
        for name, seconds in value.items():
            _check_name(name)
            if seconds < 0:
                raise ValueError(f"slow[{name!r}] must not be negative")
        return {name: min(seconds, MAX_SLOW) for name, seconds in value.items()}

    @field_validator("transient", "compensation_fail")
    @classmethod
    def _valid_counts(cls, value: dict[str, int]) -> dict[str, int]:
        for name, count in value.items():
            _check_name(name)
            if count < 0:
                raise ValueError(f"the count for {name!r} must not be negative")
        return value

    def branches(self) -> set[int]:
        """Branch indexes named explicitly (``explore[i]``) by any fault."""
        names = [self.fail_at or "", *self.slow, *self.transient, *self.compensation_fail]
        return {index for index in map(branch_of, names) if index is not None}

    def delay(self, step: str) -> None:
        """Sleep as long as `slow` asks for this step instance (outside any transaction)."""
        seconds = self.slow.get(step, self.slow.get(step.split("[", 1)[0], 0.0))
        if seconds > 0:
            time.sleep(min(seconds, MAX_SLOW))

    def check(self, ctx: StepContext, *, branches: int = 1, seed: int = 0) -> None:
        """Raise the failure this attempt should suffer, if any.

        Args:
            ctx: The running action or compensation.
            branches: How many ``explore`` branches the mission has (for ``fail_at``).
            seed: Mission seed, mixed into the `fail_rate` draw.

        Raises:
            NonRetryableError: For ``fail_at`` and ``fail_rate``.
            RuntimeError: For ``transient`` and ``compensation_fail``.
        """
        if ctx.direction == "compensation":
            limit = _count(self.compensation_fail, ctx.step)
            if ctx.attempt <= limit:
                raise RuntimeError(
                    f"injected: compensation of {ctx.step} failed "
                    f"(attempt {ctx.attempt} of the first {limit})"
                )
            return
        if self._fails_at(ctx.step, branches):
            raise NonRetryableError(f"injected: {ctx.step} failed (fail_at={self.fail_at})")
        if self.fail_rate > 0 and ctx.step.split("[", 1)[0] in RANDOM_STEPS:
            draw = _draw(seed, ctx.saga_id, ctx.step)
            if draw < self.fail_rate:
                raise NonRetryableError(
                    f"injected: {ctx.step} failed (draw {draw:.3f} < fail_rate {self.fail_rate})"
                )
        limit = _count(self.transient, ctx.step)
        if ctx.attempt <= limit:
            raise RuntimeError(
                f"injected: {ctx.step} flaked (attempt {ctx.attempt} of the first {limit})"
            )

    def _fails_at(self, step: str, branches: int) -> bool:
        if self.fail_at is None:
            return False
        if self.fail_at == "explore":
            return step == f"explore[{max(branches, 1) - 1}]"
        return self.fail_at == step


def _count(table: dict[str, int], step: str) -> int:
    exact = table.get(step)
    return exact if exact is not None else table.get(step.split("[", 1)[0], 0)


def _draw(seed: int, saga_id: str, step: str) -> float:
    """A number in [0, 1) fixed by the seed, the saga and the step instance."""
    digest = hashlib.sha256(f"{seed}:{saga_id}:{step}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def lift_top_level(data: Any) -> Any:
    """Move top-level ``fail_at`` / ``fail_rate`` (as the CLI sends them) into ``faults``."""
    if not isinstance(data, dict) or not ({"fail_at", "fail_rate"} & data.keys()):
        return data
    data = dict(data)
    faults = data.get("faults") or {}
    faults = faults.model_dump() if isinstance(faults, Faults) else dict(faults)
    for name in ("fail_at", "fail_rate"):
        if name in data:
            value = data.pop(name)
            if value is not None:
                faults[name] = value
    data["faults"] = faults
    return data
