"""A saga whose input, output and error carry markup, for the dashboard's escaping tests.

``hostile`` runs ``echo`` (its output repeats the input's ``note``), then ``refuse``, which
fails with an error that repeats it too; ``echo`` is compensated.
"""

from __future__ import annotations

from typing import Any

from sagakit import NonRetryableError, RetryPolicy, Saga, Step, StepContext, saga_task

ONCE = RetryPolicy(max_attempts=1)


@saga_task("hostile.echo")
def echo(ctx: StepContext) -> dict[str, Any]:
    return {"note": ctx.input.get("note")}


@saga_task("hostile.undo")
def undo(ctx: StepContext) -> None:
    return None


@saga_task("hostile.refuse")
def refuse(ctx: StepContext) -> None:
    raise NonRetryableError(f"refused: {ctx.input.get('note')}")


def _step(name: str, action: str) -> Step:
    return Step(
        name, action, "hostile.undo", queue="hostile", retry=ONCE, reads=("input",), timeout=30
    )


hostile = Saga("hostile", [_step("echo", "hostile.echo"), _step("refuse", "hostile.refuse")])
