"""Step tasks: a service's own named Celery tasks, made saga-aware.

``@saga_task("robots.allocate")`` registers an ordinary Celery task under that name (so
Flower shows ``robots.allocate``). A message the engine sent right after its transition
carries the saga as that transition left it (`messages.STATE_HEADER`): the worker runs the
function and records the outcome on that state, in one write that takes effect only if the
saga has not changed since (else under the saga's row lock, where a stale or duplicate
outcome is ignored): no read before the step, no extra orchestrator hop. A message without
it (sent by the sweeper: a retry after its delay, a re-send) makes the worker ask the saga
log first whether it scheduled that attempt and it is still outstanding (one indexed read:
a duplicate, a stale attempt or a message the log never sent is acknowledged and dropped).
A worker that cannot reach the saga log sends the outcome to the ``sagakit`` queue instead;
one whose log is briefly unreachable retries, then does the same (`runtime.outcomes`).

Expected failures (`NonRetryableError`, `RetryableError`) are logged once, as one warning
line; anything else also gets Celery's error line with its traceback.
"""

from __future__ import annotations

import logging
import socket
import traceback
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from celery import shared_task
from celery.exceptions import Ignore, SoftTimeLimitExceeded

from ..core.errors import NonRetryableError, RetryableError
from ..core.inputs import jsonable
from ..logs import saga_context
from ..messages import (
    SIGNATURE_HEADER,
    STATE_HEADER,
    BadMessage,
    OutboxMessage,
    StepKwargs,
    decode,
    parse_task_id,
    signed,
    unseal,
)
from ..store.log import Snapshot
from .app import engine_for, message_key, tracing_for
from .context import LazyInput, LazyResults, StepContext, Unreachable
from .eager import carrier_for, resume
from .outcomes import Outcome, failure, or_requeue, record, report_outcome

if TYPE_CHECKING:
    from ..engine import Carrier
    from ..tracing.spans import AttemptSpan, Tracing

logger = logging.getLogger(__name__)

StepFunction = Callable[[StepContext], Any]
EXPECTED = (NonRetryableError, RetryableError)

_FUNCTIONS: dict[str, StepFunction] = {}
"""The plain function behind each `saga_task`, by task name."""


def step_function(name: str) -> StepFunction:
    """The function registered as the step task `name` (a choreography's participant runs
    the same code, without Celery). Raises KeyError for an unknown name."""
    return _FUNCTIONS[name]


def saga_task(name: str, **options: Any) -> Callable[[StepFunction], Any]:
    """Register `fn(ctx) -> output` as the Celery task `name`, run as a saga step."""

    def decorate(fn: StepFunction) -> Any:
        _FUNCTIONS[name] = fn

        def run(self: Any, *args: Any, **kwargs: Any) -> Any:
            tracing = tracing_for(self.app)
            if tracing is None:
                return execute(self, fn, kwargs, args)
            return traced(self, tracing, fn, kwargs, args)

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


def _now() -> datetime:
    return datetime.now(UTC)


def traced(
    task: Any, tracing: Tracing, fn: StepFunction, kwargs: Mapping[str, Any], args: tuple[Any, ...]
) -> None:
    """`execute` inside the attempt's span (`tracing.spans.Tracing.attempt`)."""
    try:
        message = decode(task.request.id or "", kwargs)
    except BadMessage:
        return execute(task, fn, kwargs, args)  # no attempt to trace: it says why
    with tracing.attempt(task.request, message) as span:
        return execute(task, fn, kwargs, args, span)


def execute(
    task: Any,
    fn: StepFunction,
    kwargs: Mapping[str, Any],
    args: tuple[Any, ...] = (),
    span: AttemptSpan | None = None,
) -> None:
    """Check the attempt, run the step function, record its outcome (on `span` too)."""
    task_id: str = task.request.id or ""
    worker: str = task.request.hostname or socket.gethostname()
    try:
        if args:
            raise BadMessage(task_id, "a step message takes keyword arguments only")
        message = decode(task_id, kwargs)
    except BadMessage as exc:
        _bad_message(task, exc, worker)
        raise Ignore() from None
    with saga_context(message["saga_id"], step=message["step"], attempt=message["attempt"]):
        engine = engine_for(task.app)
        if engine is None:
            # No saga log here: run what the orchestrator signed (when the deployment has a
            # key), and let a sagakit worker record the outcome.
            if _from_orchestrator(task, kwargs):
                _execute_remote(task, fn, message, worker, span)
            elif span is not None:
                span.ignored("not signed by the orchestrator")
            return
        log = engine.log
        saga_id, step = message["saga_id"], message["step"]
        if message["saga_type"] not in engine.sagas:
            # The saga log is here but not this saga type's definition: run the attempt
            # only if the log scheduled it, and report the outcome like a remote worker.
            if _scheduled(task, log, message):
                _execute_remote(task, fn, message, worker, span)
            elif span is not None:
                span.ignored("not outstanding in the saga log")
            return
        key = or_requeue(task, "the saga log's key cannot be read", log.state_key)
        snapshot = carried(task.request, kwargs, message, key)
        small_input, item = None, message.get("item")
        if snapshot is None:
            check = or_requeue(
                task,
                "the saga log cannot check this delivery",
                lambda: log.check(saga_id, step, message["direction"], message["attempt"]),
            )
            if check is None:
                logger.warning("delivery refused: the saga log never scheduled it")
                if span is not None:
                    span.ignored("the saga log never scheduled it")
                return
            if not check.current:
                logger.info("delivery ignored: it is not current", extra={"task_id": task_id})
                if span is not None:
                    span.ignored("it is not current")
                if _redelivered(task.request):
                    resume(engine, task_id)
                return
            snapshot, small_input, item = (
                check.snapshot,
                check.input,
                message.get("item", check.item),
            )
        if not deployed(engine, snapshot):
            return
        saga = engine.definition(snapshot.state.saga_type, snapshot.state.definition_version)
        carrier = carrier_for(task, engine, _FUNCTIONS) if saga.eager else None
        kept, raised = _attempt(
            task, fn, engine, message, task_id, snapshot, worker, span, carrier, small_input, item
        )
    if kept is not None and carrier is not None:
        _run_here(task, engine, carrier, kept, worker)
    if raised is not None:
        raise raised


def _attempt(
    task: Any,
    fn: StepFunction,
    engine: Any,
    message: StepKwargs,
    task_id: str,
    snapshot: Snapshot,
    worker: str,
    span: AttemptSpan | None = None,
    carrier: Carrier | None = None,
    small_input: dict[str, Any] | None = None,
    item: Any = None,
) -> tuple[OutboxMessage | None, BaseException | None]:
    """Run one attempt and record its outcome: (the next step's message when the carrier
    is to run it here, the exception for Celery to see: Ignore for an expected failure)."""
    log = engine.log
    saga_id, step = message["saga_id"], message["step"]
    context = StepContext(
        saga_id=saga_id,
        saga_type=message["saga_type"],
        step=step,
        attempt=message["attempt"],
        direction=message["direction"],
        input=message.get("input") or small_input or LazyInput(lambda: log.input(saga_id)),
        results=message.get("results")
        or LazyResults(lambda name: log.output(saga_id, name), lambda: log.outputs(saga_id)),
        item=item,
        task_id=task_id,
    )
    started = _now()
    kept: list[OutboxMessage] = []

    def write(outcome: Outcome) -> object:
        decision, here = engine.advance(
            message,
            task_id,
            worker=worker,
            started_at=started,
            snapshot=snapshot,
            carrier=carrier,
            **outcome,
        )
        kept[:] = [here] if here is not None else []
        return decision

    def finish(outcome: Outcome) -> OutboxMessage | None:
        if span is not None:
            span.outcome(outcome)
        record(task, write, message, task_id, outcome, worker=worker, started_at=started)
        return kept[0] if kept else None

    try:
        output = jsonable(fn(context))
    except SoftTimeLimitExceeded:
        here = finish({"timed_out": True})
        logger.warning("attempt timed out")
        return here, Ignore()
    except EXPECTED as exc:
        here = finish(failure(exc, retryable=not isinstance(exc, NonRetryableError)))
        logger.warning("step failed: %s: %s", type(exc).__name__, exc)
        return here, Ignore()
    except Exception as exc:
        here = finish(failure(exc, traceback=traceback.format_exc()))
        return here, exc
    return finish({"output": output}), None


def _run_here(
    task: Any, engine: Any, carrier: Carrier, message: OutboxMessage, worker: str
) -> None:
    """Run the steps an eager saga hands to this delivery, one after the other, each with
    its outcome recorded as if its own message had brought it (`runtime.eager`)."""
    key = engine.log.state_key()
    next_message: OutboxMessage | None = message
    while next_message is not None:
        m, next_message = next_message, None
        kwargs = m.kwargs
        with saga_context(kwargs["saga_id"], step=kwargs["step"], attempt=kwargs["attempt"]):
            state = unseal(key, m.task_id, kwargs, m.state)
            snapshot = _snapshot(state, kwargs) if state is not None else None
            if snapshot is None:
                check = engine.log.check(
                    kwargs["saga_id"], kwargs["step"], kwargs["direction"], kwargs["attempt"]
                )
                if check is None or not check.current:
                    continue
                snapshot = check.snapshot
            fn = _FUNCTIONS[m.task_name]
            next_message, raised = _attempt(
                task,
                fn,
                engine,
                kwargs,
                m.task_id,
                snapshot,
                worker,
                None,
                carrier,
                None,
                kwargs.get("item"),
            )
            if raised is not None and not isinstance(raised, Ignore):
                logger.error(
                    "step %s raised an unexpected error",
                    m.task_name,
                    exc_info=(type(raised), raised, raised.__traceback__),
                )


def deployed(engine: Any, snapshot: Snapshot) -> bool:
    """Tell whether this worker has the definition version the saga runs; if not, say so
    once: the attempt is not run here (the sweeper sends it again once that version is
    deployed somewhere), and the saga is not advanced by another version."""
    head = snapshot.state
    if engine.deployed(head.saga_type, head.definition_version):
        return True
    logger.warning(
        "delivery ignored: the saga runs %s version %d, which is not deployed here",
        head.saga_type,
        head.definition_version,
    )
    return False


def carried(
    request: Any, kwargs: Mapping[str, Any], message: StepKwargs, key: bytes
) -> Snapshot | None:
    """The saga state the message carries, if its seal holds and it is for this attempt.

    Not for a redelivery (a killed pool process, a visibility timeout, a restored unacked
    message: kombu marks them): the state may be long stale, and the read before the step
    drops a copy whose attempt is over, at the cost of one indexed read.
    """
    header = getattr(request, STATE_HEADER, None)
    if not header or _redelivered(request):
        return None
    state = unseal(key, request.id or "", kwargs, header)
    if state is None:
        logger.warning("the saga state this message carries is not sealed by the saga log")
        return None
    return _snapshot(state, message)


def _snapshot(state: str, message: StepKwargs) -> Snapshot | None:
    """The state a message carries, if it holds the message's attempt as outstanding."""
    return Snapshot.carried(
        state, message["saga_id"], message["step"], message["direction"], message["attempt"]
    )


def _scheduled(task: Any, log: Any, message: StepKwargs) -> bool:
    """Whether the saga log holds this attempt as outstanding (says why not, if not)."""
    check = or_requeue(
        task,
        "the saga log cannot check this delivery",
        lambda: log.check(
            message["saga_id"], message["step"], message["direction"], message["attempt"]
        ),
    )
    if check is None:
        logger.warning("delivery refused: the saga log never scheduled it")
        return False
    if not check.current:
        logger.info("delivery ignored: it is not current")
        return False
    return True


_unsigned_warned = False


def _from_orchestrator(task: Any, kwargs: Mapping[str, Any]) -> bool:
    """Whether a worker without the saga log may run this message: signed with the
    deployment's key when it has one (`Settings.message_key`), else any message."""
    global _unsigned_warned
    key = message_key(task.app)
    request = task.request
    if key is None:
        if not _unsigned_warned:
            _unsigned_warned = True
            logger.warning(
                "this worker cannot reach the saga log and has no message key: it runs every "
                "step message the broker delivers; set SAGAKIT_MESSAGE_KEY (docs/deployment.md)"
            )
        return True
    header = getattr(request, SIGNATURE_HEADER, None)
    if signed(key, request.id or "", kwargs, getattr(request, STATE_HEADER, None), header):
        return True
    why = "unsigned" if header is None else "its signature does not hold"
    logger.warning("delivery of %s refused: %s (SAGAKIT_MESSAGE_KEY)", request.id, why)
    return False


def _redelivered(request: Any) -> bool:
    delivery = getattr(request, "delivery_info", None) or {}
    return bool(delivery.get("redelivered") or getattr(request, "redelivered", False))


def _bad_message(task: Any, exc: BadMessage, worker: str) -> None:
    """Record an undecodable message as a failed attempt (the step's policy retries it)."""
    parsed = parse_task_id(exc.task_id)
    engine = engine_for(task.app)
    if parsed is None or engine is None:
        logger.warning("%s; dropped", exc)
        return
    message: StepKwargs = {
        "saga_id": parsed.saga_id,
        "saga_type": "",
        "step": parsed.step,
        "attempt": parsed.attempt,
        "direction": parsed.direction,
    }
    with saga_context(parsed.saga_id, step=parsed.step, attempt=parsed.attempt):
        check = or_requeue(
            task,
            "the saga log cannot check this delivery",
            lambda: engine.log.check(parsed.saga_id, parsed.step, parsed.direction, parsed.attempt),
        )
        if check is None or not check.current:
            logger.warning("%s; dropped (not an outstanding attempt)", exc)
            return
        logger.warning("%s; recorded as a failed attempt", exc)
        started = _now()
        or_requeue(
            task,
            "the failed attempt is not recorded yet",
            lambda: engine.finish(
                message,
                exc.task_id,
                error=f"malformed step message: {exc.why}",
                worker=worker,
                started_at=started,
            ),
        )


def _execute_remote(
    task: Any, fn: StepFunction, message: StepKwargs, worker: str, span: AttemptSpan | None
) -> None:
    step = message["step"]
    context = StepContext(
        saga_id=message["saga_id"],
        saga_type=message["saga_type"],
        step=step,
        attempt=message["attempt"],
        direction=message["direction"],
        input=message["input"] if "input" in message else Unreachable("the saga input", step),
        results=message["results"] if "results" in message else Unreachable("results", step),
        item=message.get("item"),
        task_id=task.request.id,
    )
    report: dict[str, Any] = {
        "message": dict(message),
        "task_id": task.request.id,
        "worker": worker,
        "started_at": _now().isoformat(),
    }
    try:
        report["output"] = jsonable(fn(context))
    except Exception as exc:
        report.update(
            error=f"{type(exc).__name__}: {exc}",
            error_type=type(exc).__name__,
            traceback=None if isinstance(exc, EXPECTED) else traceback.format_exc(),
            retryable=not isinstance(exc, NonRetryableError),
            timed_out=isinstance(exc, SoftTimeLimitExceeded),
        )
        if span is not None:
            span.outcome(report)
        report_outcome(task.app, report)
        if isinstance(exc, EXPECTED):
            logger.warning("step failed: %s: %s", type(exc).__name__, exc)
            raise Ignore() from None
        raise
    if span is not None:
        span.outcome(report)
    report_outcome(task.app, report)


@shared_task(  # type: ignore[untyped-decorator]
    name="sagakit.record_outcome", bind=True, acks_late=True, ignore_result=True
)
def record_outcome(
    self: Any,
    message: dict[str, Any],
    task_id: str,
    worker: str,
    started_at: str | None = None,
    output: Any = None,
    error: str | None = None,
    error_type: str = "",
    traceback: str | None = None,
    retryable: bool = True,
    timed_out: bool = False,
) -> None:
    """Record an outcome sent by a service worker without access to the saga log."""
    engine = engine_for(self.app)
    if engine is None:
        raise RuntimeError("sagakit.record_outcome needs a worker bound to the saga log")
    decoded = decode(task_id, message)
    with saga_context(decoded["saga_id"], step=decoded["step"], attempt=decoded["attempt"]):
        key = message_key(self.app)
        if key is not None:
            header = getattr(self.request, SIGNATURE_HEADER, None)
            if not signed(key, task_id, self.request.kwargs or {}, None, header):
                logger.warning(
                    "outcome of %s refused: not signed with the deployment's message key", task_id
                )
                return
        # Acknowledged only once written: while the log is unreachable, retried, and past
        # the patience put back on the queue.
        or_requeue(
            self,
            "the outcome is not recorded yet",
            lambda: engine.finish(
                decoded,
                task_id,
                output=output,
                error=error,
                error_type=error_type,
                traceback=traceback,
                retryable=retryable,
                timed_out=timed_out,
                worker=worker,
                started_at=datetime.fromisoformat(started_at) if started_at else None,
            ),
        )
