"""Tracing's parts that need no worker: off costs nothing, the dispatcher's choice of context,
the missing extra, and the RabbitMQ settings' neighbour in make_celery."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Collection, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import pytest

from sagakit.core.errors import InvalidInput
from sagakit.messages import OutboxMessage
from sagakit.runtime.app import make_celery

pytest.importorskip("opentelemetry.sdk")

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)

from sagakit.tracing.dispatch import TracingDispatcher
from sagakit.tracing.spans import Tracing

RECORDED = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


class Sent:
    """A dispatcher that keeps what it is given."""

    publishes_events = False

    def __init__(self) -> None:
        self.messages: list[OutboxMessage] = []

    def send(
        self, messages: Sequence[OutboxMessage], entries: Sequence[Any] = (), **_: Any
    ) -> list[OutboxMessage]:
        self.messages.extend(messages)
        return []


def _message(saga_id: str, trace: Mapping[str, str] | None = None) -> OutboxMessage:
    kwargs: Any = {"saga_id": saga_id, "saga_type": "t", "step": "a", "attempt": 1}
    return OutboxMessage(
        saga_id, f"{saga_id}.00.a.fwd.1", "t.a", "q", kwargs, None, datetime.now(UTC), trace=trace
    )


@pytest.fixture
def tracing() -> tuple[Tracing, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return Tracing(provider), exporter


def test_a_message_carries_the_given_then_the_current_then_the_recorded_context(
    tracing: tuple[Tracing, InMemorySpanExporter],
) -> None:
    tracer, exporter = tracing
    asked: list[set[str]] = []

    def lookup(ids: Collection[str]) -> Mapping[str, str]:
        asked.append(set(ids))
        return {"s1": RECORDED}

    inner = Sent()
    dispatcher = TracingDispatcher(inner, tracer, lookup)
    given = {"traceparent": "00-11111111111111111111111111111111-2222222222222222-01"}
    dispatcher.send([_message("s1"), _message("s2"), _message("s3", given)])  # a sweeper's
    assert [m.trace for m in inner.messages] == [{"traceparent": RECORDED}, None, given]
    assert asked == [{"s1", "s2"}]

    inner.messages.clear()
    message: Any = {"saga_id": "s1", "saga_type": "t", "step": "a", "attempt": 1}
    with tracer.attempt(object(), {**message, "direction": "action"}) as attempt:
        dispatcher.send([_message("s1")])  # the attempt's outcome sends the next step
    (sent,) = inner.messages
    assert sent.trace is not None
    span_id = attempt.span.get_span_context().span_id
    assert sent.trace["traceparent"].split("-")[2] == f"{span_id:016x}"
    assert asked == [{"s1", "s2"}]  # no lookup inside the saga's own attempt
    assert [s.name for s in exporter.get_finished_spans()] == ["step a"]

    inner.messages.clear()
    with tracer.tracer.start_as_current_span("POST /api/sagas/s1/cancel"):
        dispatcher.send([_message("s1")])  # the cancel's compensations stay on the saga's trace
    assert [m.trace for m in inner.messages] == [{"traceparent": RECORDED}]
    assert asked == [{"s1", "s2"}, {"s1"}]


def test_an_existing_tasks_span_gets_the_attempts_attributes(
    tracing: tuple[Tracing, InMemorySpanExporter],
) -> None:
    """Celery's span of an existing task is its attempt's: `runtime.adopted` names it."""
    tracer, exporter = tracing
    message: Any = {
        "saga_id": "s1",
        "saga_type": "order",
        "step": "charge",
        "attempt": 2,
        "direction": "action",
    }
    with tracer.tracer.start_as_current_span("run/shop.charge"):
        tracer.existing(message, {"error": "CardDeclined: no", "retryable": False})
    tracer.existing(message, {"output": 1})  # outside any span: nothing to name
    (span,) = exporter.get_finished_spans()
    assert dict(span.attributes or {}) == {
        "sagakit.saga.id": "s1",
        "sagakit.saga.type": "order",
        "sagakit.step": "charge",
        "sagakit.attempt": 2,
        "sagakit.direction": "action",
        "sagakit.outcome": "failed",
    }
    assert span.status.status_code.name == "ERROR"


def test_a_failed_lookup_sends_the_messages_without_a_parent(
    tracing: tuple[Tracing, InMemorySpanExporter],
) -> None:
    def lookup(ids: Collection[str]) -> Mapping[str, str]:
        raise OSError("the saga log is down")

    inner = Sent()
    assert TracingDispatcher(inner, tracing[0], lookup).send([_message("s1")]) == []
    assert [m.trace for m in inner.messages] == [None]


def test_tracing_off_loads_none_of_it(tmp_path: Any) -> None:
    """Neither sagakit's tracing nor an instrumentation (redis-py may load the API itself)."""
    probe = (
        "import sys; from sagakit import Settings, System; "
        f"s = System(Settings(database_url='sqlite:///{tmp_path}/log.db', imports=[])); "
        "assert s.tracing is None and s.engine.tracing is None; "
        "print(sorted(m for m in sys.modules if m.startswith("
        "('sagakit.tracing', 'opentelemetry.instrumentation', 'opentelemetry.sdk.trace'))))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "[]", done.stdout


def test_tracing_without_the_extra_names_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    from sagakit.tracing.setup import install

    monkeypatch.setitem(sys.modules, "opentelemetry.instrumentation.celery", None)
    with pytest.raises(InvalidInput) as raised:
        install()
    assert raised.value.field == "SAGAKIT_TRACING"
    assert "pip install 'sagakit[tracing]'" in str(raised.value)


def test_a_rabbitmq_broker_gets_quorum_queues_and_publisher_confirms() -> None:
    rabbit = make_celery("amqp://guest:guest@localhost:5672/v")
    assert rabbit.conf.task_default_queue_type == "quorum"
    assert rabbit.conf.broker_transport_options == {"confirm_publish": True}
    assert rabbit.amqp.queues["work"].queue_arguments == {"x-queue-type": "quorum"}
    assert rabbit.amqp.queues["sagakit"].queue_arguments == {"x-queue-type": "quorum"}
    assert rabbit.conf.worker_prefetch_multiplier == 1
    redis = make_celery("redis://localhost:6379/0")
    assert redis.conf.task_default_queue_type == "classic"
    assert "confirm_publish" not in redis.conf.broker_transport_options
