"""What `sagakit bench` runs: no-op sagas, and the plain Celery tasks it compares them with.

Importing this module registers them (the bench adds it to ``SAGAKIT_IMPORTS`` of the
workers it starts); a user's system never sees them.
"""

from __future__ import annotations

import os
import time
from typing import Any

from celery import shared_task

from ..core.definition import Parallel, RetryPolicy, Saga, Step
from ..core.errors import NonRetryableError
from ..runtime.context import StepContext
from ..runtime.tasks import saga_task
from . import probe

BENCH_QUEUE = "bench"
MAX_STEPS = 8
DONE_KEY = "sagakit:bench:done"
"""Redis list the plain Celery tasks append ``<marker> <epoch seconds>`` to when they end."""

probe.install()

NO_RETRY = RetryPolicy(max_attempts=1)


@saga_task("sagakit.bench.noop")
def noop(ctx: StepContext) -> None:
    """Do nothing, successfully."""


@saga_task("sagakit.bench.fail")
def fail(ctx: StepContext) -> None:
    """Fail, as a business rule would."""
    raise NonRetryableError("the benchmark's failing step")


@saga_task("sagakit.bench.items")
def items(ctx: StepContext) -> dict[str, Any]:
    """Return the list a fan-out step fans out over (``input.width`` items)."""
    return {"items": list(range(int(ctx.input.get("width", 1))))}


def _step(name: str, action: str = "sagakit.bench.noop") -> Step:
    return Step(
        name,
        action,
        "sagakit.bench.noop",
        queue=BENCH_QUEUE,
        retry=NO_RETRY,
        timeout=None if os.environ.get("BENCH_TIMEOUT") == "none" else 60.0,
    )


def _linear(steps: int, *, eager: bool = False) -> Saga:
    return Saga(
        f"bench_eager_{steps}" if eager else f"bench_{steps}",
        [_step(f"s{i}") for i in range(1, steps + 1)],
        description=f"{steps} no-op steps" + (", eager" if eager else ""),
        eager=eager,
    )


def _failing(steps: int, *, eager: bool = False) -> Saga:
    """M steps where step M-1 fails: M-2 compensations run, in reverse order."""
    stages = [_step(f"s{i}") for i in range(1, steps - 1)]
    stages.append(_step(f"s{steps - 1}", "sagakit.bench.fail"))
    stages.append(_step(f"s{steps}"))
    return Saga(
        f"bench_eager_fail_{steps}" if eager else f"bench_fail_{steps}",
        stages,
        description=f"{steps} steps, step {steps - 1} fails" + (", eager" if eager else ""),
        eager=eager,
    )


BENCH_SAGAS = [_linear(m, eager=e) for m in range(1, MAX_STEPS + 1) for e in (False, True)]
BENCH_SAGAS += [_failing(m, eager=e) for m in range(3, MAX_STEPS + 1) for e in (False, True)]
BENCH_SAGAS.append(
    Saga(
        "bench_fan",
        [
            _step("a", "sagakit.bench.items"),
            Step(
                "each",
                "sagakit.bench.noop",
                "sagakit.bench.noop",
                queue=BENCH_QUEUE,
                retry=NO_RETRY,
                timeout=60.0,
                for_each="a.items",
            ),
            Parallel("end", [_step("z")]),
        ],
        description="a fan-out of input.width no-op branches",
    )
)

_done_client: Any = None


def _done(marker: str) -> None:
    global _done_client
    if _done_client is None:
        import redis

        _done_client = redis.Redis.from_url(os.environ["SAGAKIT_BROKER_URL"])
    _done_client.rpush(DONE_KEY, f"{marker} {time.time()}")


@shared_task(name="sagakit.bench.raw", acks_late=True, ignore_result=True)  # type: ignore[untyped-decorator]
def raw(marker: str | None = None) -> None:
    """A plain Celery task that does nothing (and says when it ends, if asked)."""
    if marker:
        _done(marker)


@shared_task(name="sagakit.bench.raw_fail", acks_late=True, ignore_result=True)  # type: ignore[untyped-decorator]
def raw_fail() -> None:
    """A plain Celery task that fails."""
    raise RuntimeError("the benchmark's failing task")
