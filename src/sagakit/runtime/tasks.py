"""Step tasks: a service's own named Celery tasks, made saga-aware.

``@saga_task("robots.allocate")`` registers an ordinary Celery task under that name (so
Flower shows ``robots.allocate``). When it runs, the worker claims the attempt in the saga
log (a redelivered or stale message is refused and acked), calls the function, and records
the outcome and advances the saga in one transaction: no extra orchestrator hop. A worker
that cannot reach the saga log sends the outcome to the ``sagakit`` queue instead.
"""

from __future__ import annotations

import logging
import socket
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from celery import shared_task
from celery.exceptions import SoftTimeLimitExceeded

from ..core.errors import NonRetryableError
from ..logs import saga_context
from ..store.records import Claim
from .app import SAGAKIT_QUEUE, engine_for

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class StepContext:
    """What a step's action or compensation is told about its saga."""

    saga_id: str
    saga_type: str
    step: str
    attempt: int
    direction: str
    """``action`` or ``compensation``."""
    input: Mapping[str, Any]
    results: Mapping[str, Any] = field(default_factory=dict)
    """Outputs of the saga's steps that have finished, by step instance name."""
    item: Any = None
    """This instance's item, for a step that fans out with ``for_each``."""
    task_id: str = ""

    @property
    def key(self) -> str:
        """Idempotency key of this step in this saga (the same for every attempt)."""
        return f"{self.saga_id}:{self.step}:{self.direction}"


StepFunction = Callable[[StepContext], Any]


def saga_task(name: str, **options: Any) -> Callable[[StepFunction], Any]:
    """Register `fn(ctx) -> output` as the Celery task `name`, run as a saga step."""

    def decorate(fn: StepFunction) -> Any:
        def run(self: Any, **kwargs: Any) -> Any:
            return execute(self, fn, kwargs)

        run.__name__ = fn.__name__
        run.__qualname__ = fn.__qualname__
        run.__doc__ = fn.__doc__
        run.__module__ = fn.__module__
        return shared_task(
            name=name,
            bind=True,
            acks_late=True,
            reject_on_worker_lost=True,
            ignore_result=True,
            **options,
        )(run)

    return decorate


def execute(task: Any, fn: StepFunction, kwargs: dict[str, Any]) -> Any:
    """Claim the attempt, run the step function, record its outcome."""
    task_id: str = task.request.id
    worker: str = task.request.hostname or socket.gethostname()
    saga_id = str(kwargs.get("saga_id", "-"))
    with saga_context(saga_id, step=kwargs.get("step", "-"), attempt=kwargs.get("attempt", "-")):
        engine = engine_for(task.app)
        if engine is None or kwargs.get("saga_type") not in engine.sagas:
            # No saga log here, or a saga type this worker does not know: let a sagakit
            # worker record the outcome.
            return _execute_remote(task, fn, kwargs, worker)
        claim = engine.claim(task_id, worker)
        if claim is None or not claim.accepted:
            logger.info(
                "delivery ignored: attempt unknown or already claimed", extra={"task_id": task_id}
            )
            return None
        context = _context(kwargs, claim.direction, task_id)
        try:
            output = fn(context)
        except SoftTimeLimitExceeded as exc:
            engine.report(claim, task_id, error=exc, timed_out=True)
            raise
        except Exception as exc:
            engine.report(
                claim,
                task_id,
                error=exc,
                traceback=traceback.format_exc(),
                retryable=not isinstance(exc, NonRetryableError),
            )
            raise
        engine.report(claim, task_id, output=output)
        logger.info("attempt succeeded")
        return output


def _context(kwargs: Mapping[str, Any], direction: str, task_id: str) -> StepContext:
    return StepContext(
        saga_id=kwargs["saga_id"],
        saga_type=kwargs.get("saga_type", ""),
        step=kwargs["step"],
        attempt=int(kwargs["attempt"]),
        direction=direction,
        input=kwargs.get("input") or {},
        results=kwargs.get("results") or {},
        item=kwargs.get("item"),
        task_id=task_id,
    )


def _execute_remote(task: Any, fn: StepFunction, kwargs: dict[str, Any], worker: str) -> Any:
    direction = "compensation" if ".comp." in task.request.id else "action"
    context = _context(kwargs, direction, task.request.id)
    report: dict[str, Any] = {
        "saga_id": context.saga_id,
        "task_id": task.request.id,
        "worker": worker,
    }
    try:
        output = fn(context)
    except Exception as exc:
        report.update(
            error=f"{type(exc).__name__}: {exc}",
            traceback=traceback.format_exc(),
            retryable=not isinstance(exc, NonRetryableError),
            timed_out=isinstance(exc, SoftTimeLimitExceeded),
        )
        task.app.send_task("sagakit.record_outcome", kwargs=report, queue=SAGAKIT_QUEUE)
        raise
    task.app.send_task(
        "sagakit.record_outcome", kwargs={**report, "output": output}, queue=SAGAKIT_QUEUE
    )
    return output


class ReportedError(Exception):
    """An error reported by a worker that could not reach the saga log."""


@shared_task(  # type: ignore[untyped-decorator]
    name="sagakit.record_outcome", bind=True, acks_late=True, ignore_result=True
)
def record_outcome(
    self: Any,
    saga_id: str,
    task_id: str,
    worker: str,
    output: Any = None,
    error: str | None = None,
    traceback: str | None = None,
    retryable: bool = True,
    timed_out: bool = False,
) -> None:
    """Record an outcome sent by a service worker without access to the saga log."""
    engine = engine_for(self.app)
    if engine is None:
        raise RuntimeError("sagakit.record_outcome needs a worker bound to the saga log")
    with saga_context(saga_id):
        claim: Claim | None = engine.claim(task_id, worker)
        if claim is None or not claim.accepted:
            logger.info("reported outcome ignored: duplicate", extra={"task_id": task_id})
            return
        failure = None if error is None else ReportedError(error)
        engine.report(
            claim,
            task_id,
            output=output,
            error=failure,
            traceback=traceback,
            retryable=retryable,
            timed_out=timed_out,
        )
