"""Eager sagas: the worker that finished a step runs the next one where it is.

A saga defined with ``eager=True`` (`Saga.eager`) costs one Celery message per run of
steps instead of one per step. When a step's outcome leaves exactly one message due (the
saga goes on with one step, forward or compensating), the same transaction that records
the outcome writes that message's row as sent, with the delivery running now as its
``carrier``; the worker then runs the step in the same pool process, records its outcome
the same way, and so on. The saga log sees every attempt as it would otherwise (one write
per step, the same history and timeline); Flower sees the first step's task only, running
for the whole run.

Where the worker runs a step it was not sent, its heartbeat holds the carrier's task id,
and the sweeper counts the carried attempt as held through its row (`store.recovery`): it
is neither re-sent while the carrier runs nor after a broker flush. A worker that dies has
its carried attempt timed out like the one it was running (`Sweeper._take_over`). A pool
process killed alone has its delivery requeued by Celery (``reject_on_worker_lost``): the
redelivery finds its own attempt over and sends the attempt it carried (`resume`), which
runs again at once, as a step whose own message was redelivered would.

A step runs where it is only when nothing about it needs a message of its own:

- it is a ``saga_task`` registered in this worker, on the queue the carrier came from;
- its timeout, if it has one, is sagakit's own (the sweeper times out a carried attempt
  that overruns it, from when its row was written), not Celery's time limits
  (``SAGAKIT_TIME_LIMITS``: Celery limits each task, and the carrier's limit would count
  the carried steps' time);
- it is not an existing task run with its own arguments (`Step.args`: the task keeps its
  own options), its task has no Celery rate or time limit of its own (Celery applies those
  to a delivery), tracing is off, and the worker is not shutting down;
- the run is shorter than `MAX_RUN` steps: then the next message goes to the broker, and
  the run goes on from wherever a worker takes it.
"""

from __future__ import annotations

import logging
from collections.abc import Container
from typing import Any

from celery.worker import state as worker_state

from ..engine import Carrier
from ..messages import OutboxMessage
from ..store import recovery
from .app import tracing_for

logger = logging.getLogger(__name__)

MAX_RUN = 32
"""Steps one delivery runs at most: the carrier's message stays unacknowledged until the
run ends, so a bounded run bounds what a lost pool process takes with it."""


def carrier_for(task: Any, engine: Any, registered: Container[str]) -> Carrier | None:
    """The carrier of the delivery `task` runs, or None where steps cannot run in it:
    `registered` holds the task names this worker can run as saga steps."""
    request = task.request
    limits = getattr(engine.dispatcher, "time_limits", True)
    if limits or tracing_for(task.app) is not None or _limited(task):
        return None
    queue = (getattr(request, "delivery_info", None) or {}).get("routing_key")
    if not queue or not request.id:
        return None
    run = [1]

    def takes(m: OutboxMessage) -> bool:
        if run[0] >= MAX_RUN or worker_state.should_stop or worker_state.should_terminate:
            return False
        if m.call is not None or m.queue != queue:
            return False
        if m.task_name not in registered or _limited_task(task.app.tasks.get(m.task_name)):
            return False
        run[0] += 1
        return True

    return Carrier(request.id, takes)


def _limited(task: Any) -> bool:
    """Whether Celery enforces a time limit on this delivery."""
    limits = getattr(task.request, "timelimit", None) or ()
    return any(limits) or bool(task.time_limit or task.soft_time_limit)


def _limited_task(task: Any) -> bool:
    """Whether a task has a Celery rate or time limit of its own (or is not known)."""
    if task is None:
        return True
    return bool(task.time_limit or task.soft_time_limit or task.rate_limit)


def resume(engine: Any, task_id: str) -> None:
    """A redelivered carrier whose own attempt is over: the attempt it carried when its
    pool process was lost is sent now, as a message of its own (by the next sweep)."""
    try:
        sent = recovery.release_carried(engine.log.db, task_id)
    except Exception as exc:  # the sweeper's redrive sends it later
        logger.warning("the attempt this delivery carried is not sent again yet: %s", exc)
        return
    if sent:
        logger.warning(
            "this delivery was lost while it ran %d attempt(s) of its saga: sending them again",
            sent,
        )
