"""The spans of a saga: its start, and one per step attempt and per compensation attempt."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import replace
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from ..journal import Entry
from ..messages import OutboxMessage, StepKwargs

INSTRUMENTATION = "sagakit"

SAGA_ID = "sagakit.saga.id"
SAGA_TYPE = "sagakit.saga.type"
STEP = "sagakit.step"
ATTEMPT = "sagakit.attempt"
DIRECTION = "sagakit.direction"
OUTCOME = "sagakit.outcome"
ATTRIBUTES = (SAGA_ID, SAGA_TYPE, STEP, ATTEMPT, DIRECTION, OUTCOME)
"""The attributes of an attempt's span. ``sagakit.outcome`` is ``succeeded``, ``failed``,
``timed_out``, or ``ignored`` (a duplicate or stale delivery: nothing ran)."""

CARRIED = ("traceparent", "tracestate")
"""The message headers that carry the context (W3C Trace Context)."""

_RUNNING: ContextVar[str | None] = ContextVar("sagakit_traced_saga", default=None)
"""The saga whose attempt's span is current (in this thread), if any."""


class AttemptSpan:
    """The span of one attempt, told its outcome by the step task."""

    def __init__(self, span: trace.Span) -> None:
        self.span = span

    def outcome(self, outcome: Mapping[str, Any]) -> None:
        """Record an outcome as `runtime.outcomes.Outcome` gives it."""
        if outcome.get("timed_out"):
            self._ended("timed_out", outcome.get("error") or "timed out")
        elif outcome.get("error") is not None:
            self._ended("failed", str(outcome["error"]))
        else:
            self.span.set_attribute(OUTCOME, "succeeded")

    def ignored(self, why: str) -> None:
        """The delivery was not run: `why`."""
        self.span.set_attribute(OUTCOME, "ignored")
        self.span.add_event("delivery ignored", {"reason": why})

    def _ended(self, outcome: str, error: str) -> None:
        self.span.set_attribute(OUTCOME, outcome)
        self.span.set_status(Status(StatusCode.ERROR, error))


class Tracing:
    """Opens sagakit's spans and reads and writes the context the messages carry."""

    def __init__(self, tracer_provider: trace.TracerProvider | None = None) -> None:
        self.tracer = trace.get_tracer(INSTRUMENTATION, tracer_provider=tracer_provider)

    def running(self) -> tuple[str | None, dict[str, str]]:
        """The saga whose attempt runs here (None outside one), and the current context as
        message headers: a message of that saga goes on its trace from here; any other (a
        cancel's, sent during its HTTP request) is not on this trace."""
        saga_id = _RUNNING.get()
        return saga_id, self.carrier() if saga_id is not None else {}

    def carrier(self) -> dict[str, str]:
        """The current context as message headers; empty when no span is current."""
        if not trace.get_current_span().get_span_context().is_valid:
            return {}
        headers: dict[str, str] = {}
        propagate.inject(headers)
        return {k: v for k, v in headers.items() if k in CARRIED}

    def started(
        self,
        saga_type: str,
        saga_id: str,
        messages: Mapping[str, OutboxMessage],
        rows: list[Entry],
    ) -> tuple[dict[str, OutboxMessage], list[Entry]]:
        """A saga's start: its span (a child of the current one, the HTTP request's under
        FastAPI's instrumentation) becomes the parent of its first messages, and its
        ``traceparent`` is kept in the ``saga_started`` entry (``detail.trace``)."""
        span = self.tracer.start_span(
            f"start {saga_type}", attributes={SAGA_ID: saga_id, SAGA_TYPE: saga_type}
        )
        with trace.use_span(span, end_on_exit=True):
            carrier = self.carrier()
        if not carrier:  # a non-recording provider: nothing to carry
            return dict(messages), rows
        carried = {k: replace(m, trace=carrier) for k, m in messages.items()}
        first = replace(rows[0], detail={**(rows[0].detail or {}), "trace": carrier["traceparent"]})
        return carried, [first, *rows[1:]]

    def existing(self, message: StepKwargs, outcome: Mapping[str, Any]) -> None:
        """An existing task's attempt (`runtime.adopted`): its code is not sagakit's, so
        Celery's span of the task (its instrumentation's, current while the outcome is
        learnt) is the attempt's span and gets its attributes and outcome."""
        span = trace.get_current_span()
        if not span.is_recording():
            return
        span.set_attributes(_attributes(message))
        AttemptSpan(span).outcome(outcome)

    @contextmanager
    def attempt(self, request: Any, message: StepKwargs) -> Iterator[AttemptSpan]:
        """One attempt's span, current inside: a child of Celery's span for the task when
        Celery's instrumentation made one, else of the context the message carries."""
        parent = None
        if not trace.get_current_span().get_span_context().is_valid:
            carried = {k: v for k in CARRIED if isinstance(v := getattr(request, k, None), str)}
            parent = propagate.extract(carried)
        verb = "step" if message["direction"] == "action" else "compensate"
        with self.tracer.start_as_current_span(
            f"{verb} {message['step'].split('[', 1)[0]}",
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes=_attributes(message),
            set_status_on_exception=False,  # the outcome says (Celery's Ignore is no error)
        ) as span:
            running = _RUNNING.set(message["saga_id"])
            try:
                yield AttemptSpan(span)
            finally:
                _RUNNING.reset(running)


def _attributes(message: StepKwargs) -> dict[str, str | int]:
    return {
        SAGA_ID: message["saga_id"],
        SAGA_TYPE: message["saga_type"],
        STEP: message["step"],
        ATTEMPT: message["attempt"],
        DIRECTION: message["direction"],
    }
