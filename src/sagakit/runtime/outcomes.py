"""Recording a step's outcome when the saga log is briefly out of reach.

An outcome is never dropped because the log did not answer. The worker that ran the step
retries the write with backoff for `record_patience` seconds (`Settings.record_patience`);
past that it hands the outcome to the ``sagakit`` queue as a ``sagakit.record_outcome``
message (the one workers without the log send) and acknowledges the step's message: the
outcome now waits in the broker, and a sagakit worker records it once the log answers. If
the broker refuses it too, the step's message goes back to its queue and the step runs
again later (steps are idempotent). ``sagakit.record_outcome`` itself retries the same way
and, past its patience, puts its message back on its queue: it is acknowledged only once
the outcome is written (or found stale: a duplicate is ignored under the saga's lock).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

from celery.exceptions import Reject

from ..messages import SIGNATURE_HEADER, StepKwargs, signature
from ..outages import Unreachable, unreachable
from .app import SAGAKIT_QUEUE, message_key, record_patience

logger = logging.getLogger(__name__)

T = TypeVar("T")
FIRST_DELAY = 0.1
"""Seconds before the first retry; each next one waits twice as long, up to MAX_DELAY."""
MAX_DELAY = 2.0

Outcome = dict[str, Any]
"""What an attempt did, as ``sagakit.record_outcome`` takes it: ``output``, or ``error``
(text), ``error_type``, ``traceback``, ``retryable``, ``timed_out``."""


def failure(exc: BaseException, *, traceback: str | None = None, retryable: bool = True) -> Outcome:
    """The outcome of an attempt that raised `exc`."""
    return {
        "error": f"{type(exc).__name__}: {exc}",
        "error_type": type(exc).__name__,
        "traceback": traceback,
        "retryable": retryable,
    }


def patiently(patience: float, what: str, write: Callable[[], T]) -> T:
    """Run `write`, retrying with backoff while the saga log is unreachable, for up to
    `patience` seconds. Raises the last `Unreachable` past that (other errors at once)."""
    deadline = time.monotonic() + patience
    delay = FIRST_DELAY
    said = False
    while True:
        try:
            return write()
        except Exception as exc:
            outage = unreachable(exc)
            if outage is None:
                raise
            if time.monotonic() + delay > deadline:
                raise outage from exc
            if not said:
                # Text, not the error: the worker's outage log would fold it into the
                # outage it already told.
                logger.warning("%s: %s; retrying for up to %.0fs", what, str(outage), patience)
                said = True
        time.sleep(delay)
        delay = min(2 * delay, MAX_DELAY)


def record(
    task: Any,
    write: Callable[[Outcome], object],
    message: StepKwargs,
    task_id: str,
    outcome: Outcome,
    *,
    worker: str,
    started_at: datetime,
) -> None:
    """Record `outcome` through `write`; while the log is unreachable, retry, then hand it
    to the sagakit queue. Raises Reject (requeue) when the broker refuses it too."""
    try:
        patiently(
            record_patience(task.app),
            "the outcome is not recorded yet",
            lambda: write(outcome),
        )
    except Unreachable as outage:
        hand_over(task, message, task_id, outcome, worker=worker, started_at=started_at)
        logger.warning(
            "outcome handed to the %s queue (%s): a sagakit worker records it once the saga "
            "log answers",
            SAGAKIT_QUEUE,
            str(outage),
        )


def hand_over(
    task: Any,
    message: StepKwargs,
    task_id: str,
    outcome: Outcome,
    *,
    worker: str,
    started_at: datetime,
) -> None:
    """Send `outcome` to ``sagakit.record_outcome``. Raises Reject (requeue) if the broker
    does not take it: the step's message then goes back to its queue."""
    ids = ("saga_id", "saga_type", "step", "attempt", "direction", "item")
    report = {
        "message": {key: message[key] for key in ids if key in message},  # type: ignore[literal-required]
        "task_id": task_id,
        "worker": worker,
        "started_at": started_at.isoformat(),
        **outcome,
    }
    try:
        report_outcome(task.app, report)
    except Exception as exc:
        logger.error(
            "the outcome could be neither recorded nor handed over (%s): the step's message "
            "goes back to its queue and the step runs again",
            str(unreachable(exc) or exc),
        )
        raise Reject(str(exc), requeue=True) from None


def report_outcome(app: Any, report: dict[str, Any]) -> None:
    """Send an outcome report to ``sagakit.record_outcome`` on the sagakit queue, signed with
    the deployment's message key when it has one (`messages.SIGNATURE_HEADER`)."""
    key = message_key(app)
    headers = {}
    if key is not None:
        headers[SIGNATURE_HEADER] = signature(key, report["task_id"], report, None)
    app.send_task("sagakit.record_outcome", kwargs=report, queue=SAGAKIT_QUEUE, headers=headers)


def or_requeue(task: Any, what: str, write: Callable[[], T]) -> T:
    """`patiently`, and past the patience put the task's message back on its queue."""
    try:
        return patiently(record_patience(task.app), what, write)
    except Unreachable as outage:
        logger.warning("%s: %s; the message goes back to its queue", what, str(outage))
        raise Reject(str(outage), requeue=True) from None
