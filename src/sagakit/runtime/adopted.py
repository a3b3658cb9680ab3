"""Existing Celery tasks as saga steps: their outcomes, learnt from Celery's task signals.

A step with `Step.args` sends the service's own task (``payments.charge``) its own kwargs,
to the queue its app's ``task_routes`` give it, and puts the step's ids in the
`messages.STEP_HEADER`. The task's code knows nothing of sagas; its retries (``self.retry``,
``autoretry_for``: the header travels with the retried message) and time limits are its own.
In the worker (`install`, connected by `sagakit.adopt(app)`):

- ``task_received``, in the worker's main process, before the task is handed to the pool:
  the attempt is checked as a ``@saga_task``'s is (the sealed state on a first delivery,
  else one indexed read) and a delivery whose attempt is over, that the log never
  scheduled, or whose saga runs a definition version not deployed here is revoked, so it
  never runs; the state found good is handed to the pool process in the request
  (`messages.CHECKED_HEADER`);
- ``task_success`` and ``task_failure``, in the pool process, once Celery's own retries are
  done: the outcome is written as a ``@saga_task``'s is (one guarded statement on that
  state), or, in a worker that cannot reach the saga log, sent to the ``sagakit`` queue.

Messages without the header are not looked at beyond one dictionary lookup.
"""

from __future__ import annotations

import logging
import socket
from datetime import UTC, datetime
from typing import Any

from celery import signals
from celery.exceptions import Reject, SoftTimeLimitExceeded, TimeLimitExceeded
from celery.worker import state as worker_state

from ..core.errors import NonRetryableError
from ..core.inputs import jsonable
from ..logs import saga_context
from ..messages import (
    CHECKED_HEADER,
    SIGNATURE_HEADER,
    STATE_HEADER,
    STEP_HEADER,
    BadMessage,
    StepKwargs,
    decode,
    signed,
    signed_kwargs,
    unseal,
)
from ..store.log import Snapshot
from .app import engine_for, message_key, tracing_for
from .outcomes import Outcome, failure, hand_over, record

logger = logging.getLogger(__name__)

STARTED = "sagakit_started"
"""Request attribute with the time the pool process began the task."""

_installed = False


def install() -> None:
    """Connect the task signals (once per process; they serve every app in it)."""
    global _installed
    if _installed:
        return
    signals.task_received.connect(on_received, weak=False)
    signals.task_prerun.connect(on_prerun, weak=False)
    signals.task_success.connect(on_success, weak=False)
    signals.task_failure.connect(on_failure, weak=False)
    _installed = True


def on_received(sender: Any = None, request: Any = None, **_: Any) -> None:
    """Check an existing task's step attempt before it runs; revoke a delivery that must
    not run."""
    headers = getattr(request, "request_dict", None)
    if not isinstance(headers, dict):
        return
    headers.pop(CHECKED_HEADER, None)  # only this process sets it
    step = headers.get(STEP_HEADER)
    if step is None:
        return
    task_id = str(request.id)
    try:
        message = decode(task_id, step if isinstance(step, dict) else {})
    except BadMessage as exc:
        logger.warning("%s; not run", exc)
        worker_state.revoked.add(task_id)
        return
    app = request.task.app
    engine = engine_for(app)
    with saga_context(message["saga_id"], step=message["step"], attempt=message["attempt"]):
        if engine is None:
            # No saga log here: run what the orchestrator signed (when the deployment has
            # a key); the pool process sends the outcome to the sagakit queue.
            if not _signed(app, request, headers, message):
                worker_state.revoked.add(task_id)
            return
        try:
            snapshot = _snapshot(engine, request, headers, message)
        except Exception as exc:  # the log is out of reach: run it, record it later
            logger.warning("the saga log cannot check this delivery: %s", exc)
            return
        if snapshot is None:
            worker_state.revoked.add(task_id)
            return
        if message["saga_type"] not in engine.sagas:
            return  # scheduled, of a type not defined here: the outcome is handed over
        head = snapshot.state
        if not engine.deployed(head.saga_type, head.definition_version):
            logger.warning(
                "delivery ignored: the saga runs %s version %d, which is not deployed here",
                head.saga_type,
                head.definition_version,
            )
            worker_state.revoked.add(task_id)
            return
        headers[CHECKED_HEADER] = snapshot.encode()


_unsigned_warned = False


def _signed(app: Any, request: Any, headers: dict[str, Any], message: StepKwargs) -> bool:
    """Whether a worker without the saga log may run this message: signed with the
    deployment's key when it has one (`Settings.message_key`), over the step's kwargs and
    the task's own; else any message (said once)."""
    global _unsigned_warned
    key = message_key(app)
    if key is None:
        if not _unsigned_warned:
            _unsigned_warned = True
            logger.warning(
                "this worker cannot reach the saga log and has no message key: it runs every "
                "step message the broker delivers; set SAGAKIT_MESSAGE_KEY (docs/deployment.md)"
            )
        return True
    header = headers.get(SIGNATURE_HEADER)
    covered = signed_kwargs(message_fields(headers), dict(request.kwargs or {}))
    if signed(key, str(request.id), covered, headers.get(STATE_HEADER), header):
        return True
    why = "unsigned" if header is None else "its signature does not hold"
    logger.warning("delivery of %s refused: %s (SAGAKIT_MESSAGE_KEY)", request.id, why)
    return False


def message_fields(headers: dict[str, Any]) -> dict[str, Any]:
    """The step's kwargs as the sender put them in the STEP_HEADER."""
    step = headers.get(STEP_HEADER)
    return dict(step) if isinstance(step, dict) else {}


def _snapshot(
    engine: Any, request: Any, headers: dict[str, Any], message: StepKwargs
) -> Snapshot | None:
    """The state the attempt is decided on; None (said in one line) if it must not run."""
    saga_id, step = message["saga_id"], message["step"]
    direction, attempt = message["direction"], message["attempt"]
    delivery = headers.get("delivery_info") or {}
    sealed = headers.get(STATE_HEADER)
    if sealed and not delivery.get("redelivered"):
        state = unseal(engine.log.state_key(), str(request.id), message, sealed)
        if state is not None:
            carried = Snapshot.carried(state, saga_id, step, direction, attempt)
            if carried is not None:
                return carried
        else:
            logger.warning("the saga state this message carries is not sealed by the saga log")
    check = engine.log.check(saga_id, step, direction, attempt)
    if check is None or not check.current:
        why = "the saga log never scheduled it" if check is None else "it is not current"
        logger.info("delivery ignored: %s", why, extra={"task_id": str(request.id)})
        return None
    snapshot: Snapshot = check.snapshot
    return snapshot


def on_prerun(sender: Any = None, task: Any = None, **_: Any) -> None:
    """Note when an existing task's step attempt began."""
    request = getattr(task, "request", None)
    if request is not None and getattr(request, STEP_HEADER, None) is not None:
        setattr(request, STARTED, datetime.now(UTC))


def on_success(sender: Any = None, result: Any = None, **_: Any) -> None:
    """Record what an existing task returned as its step's output."""
    try:
        outcome: Outcome = {"output": jsonable(result)}
    except Exception as exc:  # what the task returned cannot be stored as JSON
        outcome = failure(exc, retryable=False)
    finish(sender, outcome)


def on_failure(sender: Any = None, exception: BaseException | None = None, **kw: Any) -> None:
    """Record an existing task's failure (after its own retries) as its step's."""
    if exception is None:
        return
    if isinstance(exception, SoftTimeLimitExceeded | TimeLimitExceeded):
        finish(sender, {"timed_out": True})
        return
    einfo = kw.get("einfo")
    text = getattr(einfo, "traceback", None)
    retryable = not isinstance(exception, NonRetryableError)
    finish(sender, failure(exception, traceback=text, retryable=retryable))


def finish(task: Any, outcome: Outcome) -> None:
    """Write `outcome` to the saga log, or hand it to the sagakit queue."""
    request = getattr(task, "request", None)
    step = getattr(request, STEP_HEADER, None)
    if request is None or step is None:
        return
    task_id = str(request.id)
    try:
        message = decode(task_id, step if isinstance(step, dict) else {})
    except BadMessage as exc:
        logger.warning("%s; its outcome is not recorded", exc)
        return
    tracing = tracing_for(task.app)
    if tracing is not None:  # Celery's span of the task is the attempt's
        tracing.existing(message, outcome)
    worker = request.hostname or socket.gethostname()
    started = getattr(request, STARTED, None) or datetime.now(UTC)
    engine = engine_for(task.app)
    with saga_context(message["saga_id"], step=message["step"], attempt=message["attempt"]):
        try:
            if engine is None or message["saga_type"] not in engine.sagas:
                hand_over(task, message, task_id, outcome, worker=worker, started_at=started)
                return
            checked = getattr(request, CHECKED_HEADER, None)
            snapshot = None
            if isinstance(checked, str):
                snapshot = Snapshot.carried(
                    checked,
                    message["saga_id"],
                    message["step"],
                    message["direction"],
                    message["attempt"],
                )

            def write(done: Outcome) -> object:
                return engine.finish(
                    message, task_id, worker=worker, started_at=started, snapshot=snapshot, **done
                )

            record(task, write, message, task_id, outcome, worker=worker, started_at=started)
        except Reject:
            pass  # said by hand_over; the sweeper sends the attempt again
        except Exception:
            logger.exception("the outcome of %s is not recorded", task_id)
