"""Step tasks shared by every version of the ``ordering`` saga (`versioned_v1`, `_v2`).

``ver.a`` fails (retryably) while the file named by ``input["gate"]`` is missing: a saga
waits mid-flight, retrying its first step, for as long as a test needs.
"""

from __future__ import annotations

import os
from typing import Any

from sagakit import RetryableError, RetryPolicy, Step, StepContext, saga_task

UNTIL_OPEN = RetryPolicy(max_attempts=None, initial_interval=0.2, max_interval=0.3, jitter=0.0)


@saga_task("ver.a")
def a(ctx: StepContext) -> dict[str, Any]:
    gate = ctx.input.get("gate")
    if gate and not os.path.exists(gate):
        raise RetryableError("the gate is closed")
    return {"step": "a"}


def _perform(ctx: StepContext) -> dict[str, Any]:
    return {"step": ctx.step}


for _name in ("b", "c", "undo"):
    saga_task(f"ver.{_name}")(_perform)


def step(name: str) -> Step:
    return Step(
        name,
        action=f"ver.{name}",
        compensation="ver.undo",
        queue="ver",
        reads=("input",),
        retry=UNTIL_OPEN,
        timeout=20,
    )
