"""Sagas and step tasks used by the engine's tests; faults come in with the saga's input.

``input["faults"]`` maps a step instance name to a list of directives:
``fail`` (non-retryable), ``transient:K`` (fail the first K attempts with an unexpected
exception), ``retryable:K`` (fail the first K attempts with `RetryableError`), ``slow:S``
(sleep S seconds), ``slow_first:S`` (sleep only on attempt 1), ``undo_fail:K`` (compensation
fails its first K attempts), ``undo_fail_while:PATH`` (compensation fails while PATH exists),
``hang_once:PATH`` (the first run writes its process id to PATH and hangs for a minute: a
test kills that process; a later run, PATH existing, goes on), ``done:PATH`` (write PATH
once the step's work is done, just before its outcome is recorded).
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from sagakit import (
    NonRetryableError,
    Parallel,
    RetryableError,
    RetryPolicy,
    Saga,
    Step,
    StepContext,
    StepKind,
    saga_task,
)

FAST = RetryPolicy(max_attempts=3, initial_interval=0.05, backoff=2.0, max_interval=0.2)
UNDO = RetryPolicy(max_attempts=3, initial_interval=0.05, backoff=2.0, max_interval=0.2)
logger = logging.getLogger(__name__)
TIMEOUT = float(os.environ.get("WORKLOAD_STEP_TIMEOUT", "20"))


def step(name: str, **options: Any) -> Step:
    options.setdefault("compensation", f"work.undo_{name}")
    # Every step reads its faults from the input: its messages carry the input, so the
    # steps also run on service workers that cannot reach the saga log.
    options.setdefault("reads", ("input",))
    options.setdefault("timeout", TIMEOUT)
    return Step(
        name,
        action=f"work.{name}",
        queue="work",
        retry=FAST,
        compensation_retry=UNDO,
        **options,
    )


linear = Saga("linear", [step("a"), step("b"), step("c"), step("d")])
fanout = Saga(
    "fanout", [step("a"), Parallel("group", [step("b1"), step("b2"), step("b3")]), step("d")]
)
pivoted = Saga(
    "pivoted",
    [
        step("a"),
        step("b"),
        step("p", kind=StepKind.PIVOT, compensation=None),
        step("r", kind=StepKind.RETRIABLE, compensation=None),
    ],
)
mapped = Saga("mapped", [step("a"), step("each", for_each="input.items"), step("d")])
noop = Saga("noop", [step(f"s{i}") for i in range(4)])
hasty = Saga("hasty", [step("h", timeout=1.0), step("d")])
"""Its first step has a one-second timeout: ``slow_first:3`` makes attempt 1 overrun it."""
eager = Saga("eager", [step("a"), step("b"), step("c"), step("d")], eager=True)
"""Each step runs in the worker that finished the one before."""
eager_hasty = Saga("eager_hasty", [step("a"), step("h", timeout=1.0), step("d")], eager=True)
"""``h`` runs where ``a`` finished, with a one-second timeout the sweeper keeps."""
eager_limited = Saga("eager_limited", [step("a"), step("l"), step("d")], eager=True)
"""``l``'s task has a Celery rate limit: it gets a message of its own."""
eager_fanout = Saga(
    "eager_fanout",
    [
        step("a"),
        Parallel("group", [step("b1"), step("b2")]),
        step("c"),
    ],
    eager=True,
)


def _directives(ctx: StepContext) -> list[str]:
    faults = ctx.input.get("faults") or {}
    return list(faults.get(ctx.step, ())) + list(faults.get(ctx.step.split("[")[0], ()))


def _perform(ctx: StepContext) -> dict[str, Any]:
    undo = ctx.direction == "compensation"
    logger.info("performing %s", ctx.direction)
    for directive in _directives(ctx):
        kind, _, arg = directive.partition(":")
        if kind == "hang_once" and not os.path.exists(arg):
            with open(arg, "w") as pid:
                pid.write(str(os.getpid()))
            time.sleep(60)
        elif kind == "slow" or (kind == "slow_first" and ctx.attempt == 1):
            time.sleep(float(arg))
        elif not undo and kind == "fail":
            raise NonRetryableError(f"{ctx.step} refused")
        elif not undo and kind == "transient" and ctx.attempt <= int(arg):
            raise RuntimeError(f"{ctx.step} flaked on attempt {ctx.attempt}")
        elif not undo and kind == "retryable" and ctx.attempt <= int(arg):
            raise RetryableError(f"{ctx.step} busy on attempt {ctx.attempt}")
        elif undo and kind == "undo_fail" and ctx.attempt <= int(arg):
            raise RuntimeError(f"undo {ctx.step} flaked on attempt {ctx.attempt}")
        elif undo and kind == "undo_fail_while" and os.path.exists(arg):
            raise RuntimeError(f"undo {ctx.step} blocked by {arg}")
    for directive in _directives(ctx):
        kind, _, arg = directive.partition(":")
        if kind == "done":
            with open(arg, "w") as done:
                done.write(ctx.direction)
    return {"step": ctx.step, "attempt": ctx.attempt, "item": ctx.item}


for _name in ("a", "b", "c", "d", "b1", "b2", "b3", "p", "r", "h", "each", "s0", "s1", "s2", "s3"):
    saga_task(f"work.{_name}")(_perform)
    saga_task(f"work.undo_{_name}")(_perform)
saga_task("work.l", rate_limit="1000/s")(_perform)
saga_task("work.undo_l")(_perform)
