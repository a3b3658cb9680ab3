"""Benchmark sagas: `bench_M` runs M no-op steps on the `bench` queue (`sagakit bench`)."""

from __future__ import annotations

from typing import Any

from .core.definition import RetryPolicy, Saga, Step
from .runtime.context import StepContext
from .runtime.tasks import saga_task

BENCH_QUEUE = "bench"
MAX_STEPS = 8


@saga_task("sagakit.bench.noop")
def noop(ctx: StepContext) -> dict[str, Any]:
    """Do nothing, successfully."""
    return {"attempt": ctx.attempt}


def _bench(steps: int) -> Saga:
    return Saga(
        f"bench_{steps}",
        [
            Step(
                f"s{i}",
                "sagakit.bench.noop",
                "sagakit.bench.noop",
                queue=BENCH_QUEUE,
                retry=RetryPolicy(max_attempts=3, initial_interval=0.1),
                timeout=60.0,
            )
            for i in range(1, steps + 1)
        ],
        description=f"{steps} no-op steps",
    )


BENCH_SAGAS = [_bench(m) for m in range(1, MAX_STEPS + 1)]
