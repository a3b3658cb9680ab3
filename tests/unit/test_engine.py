"""The engine against a real SQLite saga log, with in-memory dispatch and a manual clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pydantic import BaseModel, Field

from sagakit import (
    Engine,
    InvalidInput,
    InvalidTransition,
    RetryPolicy,
    Saga,
    SagaNotFound,
    Step,
    UnknownSagaType,
)
from sagakit.core.machine import StepSucceeded
from sagakit.store import SqlSagaStore, make_engine, upgrade
from tests.support.recording import FailingDispatcher, RecordingDispatcher, RecordingPublisher


class Order(BaseModel):
    quantity: int = Field(ge=1)
    sku: str


RETRY = RetryPolicy(max_attempts=2, initial_interval=1.0, jitter=0.0)
TWO = Saga(
    "two",
    [
        Step("a", "svc.a", "svc.undo_a", timeout=10.0, retry=RETRY),
        Step("b", "svc.b", "svc.undo_b", timeout=10.0, retry=RETRY),
    ],
    timeout=60.0,
)
TYPED = Saga("typed", [Step("a", "svc.a", "svc.undo_a")], input_model=Order)


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(sqlite_url: str) -> SqlSagaStore:
    engine = make_engine(sqlite_url)
    upgrade(engine)
    return SqlSagaStore(engine)


def make(
    store: SqlSagaStore,
    clock: Clock,
    dispatcher: RecordingDispatcher | None = None,
    publisher: RecordingPublisher | None = None,
) -> Engine:
    return Engine(
        store,
        {"two": TWO, "typed": TYPED},
        dispatcher or RecordingDispatcher(),
        events=publisher,
        clock=clock,
        redrive_after=30.0,
        timeout_grace=1.0,
    )


def complete(engine: Engine, task_id: str, output: object = None) -> None:
    claim = engine.claim(task_id, "worker@test")
    assert claim is not None and claim.accepted
    engine.report(claim, task_id, output=output)


def test_start_sends_the_first_step_with_a_readable_task_id(
    store: SqlSagaStore, clock: Clock
) -> None:
    dispatcher = RecordingDispatcher()
    engine = make(store, clock, dispatcher)
    saga_id = engine.start("two", {"x": 1}).saga_id
    [message] = dispatcher.sent
    assert message.task_id == f"{saga_id}.01.a.fwd.1"
    assert (message.task_name, message.queue) == ("svc.a", "celery")
    assert message.kwargs == {
        "saga_id": saga_id,
        "saga_type": "two",
        "step": "a",
        "attempt": 1,
        "input": {"x": 1},
        "results": {},
    }
    assert message.time_limit == 11.0
    complete(engine, message.task_id, {"made": "a"})
    assert dispatcher.sent[-1].kwargs["results"] == {"a": {"made": "a"}}


def test_broker_outage_is_covered_by_the_sweeper(store: SqlSagaStore, clock: Clock) -> None:
    engine = make(store, clock, FailingDispatcher())
    saga_id = engine.start("two", {}).saga_id
    working = RecordingDispatcher()
    engine.dispatcher = working
    assert engine.sweep().resent == 1
    assert [m.task_id for m in working.sent] == [f"{saga_id}.01.a.fwd.1"]


def test_a_lost_message_is_sent_again_after_redrive_after(
    store: SqlSagaStore, clock: Clock
) -> None:
    dispatcher = RecordingDispatcher()
    engine = make(store, clock, dispatcher)
    engine.start("two", {})
    clock.advance(29)
    assert engine.sweep().resent == 0
    clock.advance(2)
    assert engine.sweep().resent == 1
    assert dispatcher.sent[0].task_id == dispatcher.sent[1].task_id  # same attempt, same id


def test_a_duplicate_delivery_is_refused(store: SqlSagaStore, clock: Clock) -> None:
    dispatcher = RecordingDispatcher()
    engine = make(store, clock, dispatcher)
    engine.start("two", {})
    task_id = dispatcher.sent[0].task_id
    complete(engine, task_id)
    duplicate = engine.claim(task_id, "other@test")
    assert duplicate is not None and not duplicate.accepted


def test_a_step_that_outlives_its_timeout_is_retried_then_compensated(
    store: SqlSagaStore, clock: Clock
) -> None:
    dispatcher = RecordingDispatcher()
    engine = make(store, clock, dispatcher)
    saga_id = engine.start("two", {}).saga_id
    complete(engine, dispatcher.sent[0].task_id)
    engine.claim(dispatcher.sent[1].task_id, "w")  # b attempt 1 starts, then hangs
    clock.advance(12)
    assert engine.sweep().timed_out == 1
    b2 = f"{saga_id}.02.b.fwd.2"
    clock.advance(2)  # past the backoff
    engine.sweep()
    assert dispatcher.sent[-1].task_id == b2
    engine.claim(b2, "w")
    clock.advance(12)
    engine.sweep()
    record = engine.get(saga_id)
    # b may have taken effect (it timed out), so it is compensated before a.
    assert record.status == "compensating"
    assert dispatcher.sent[-1].task_id == f"{saga_id}.02.b.comp.1"


def test_a_stale_outcome_is_ignored(store: SqlSagaStore, clock: Clock) -> None:
    dispatcher = RecordingDispatcher()
    engine = make(store, clock, dispatcher)
    saga_id = engine.start("two", {}).saga_id
    complete(engine, dispatcher.sent[0].task_id)
    before = engine.get(saga_id)
    decision = engine.record(saga_id, StepSucceeded("a", 1))
    assert decision is not None and decision.ignored
    assert engine.get(saga_id).version == before.version


def test_saga_deadline_compensates(store: SqlSagaStore, clock: Clock) -> None:
    dispatcher = RecordingDispatcher()
    engine = make(store, clock, dispatcher)
    saga_id = engine.start("two", {}).saga_id
    complete(engine, dispatcher.sent[0].task_id)
    clock.advance(61)
    assert engine.sweep().deadlines == 1
    assert engine.get(saga_id).reason == "deadline exceeded"


def test_every_transition_is_published(store: SqlSagaStore, clock: Clock) -> None:
    dispatcher, publisher = RecordingDispatcher(), RecordingPublisher()
    engine = make(store, clock, dispatcher, publisher)
    saga_id = engine.start("two", {}).saga_id
    complete(engine, dispatcher.sent[0].task_id)
    events = [e["event"] for e in publisher.entries]
    assert events == [
        "saga_started",
        "step_scheduled",
        "step_started",
        "step_completed",
        "step_scheduled",
    ]
    assert [h.event for h in engine.history(saga_id)] == events


def test_bad_requests_raise_clear_errors(store: SqlSagaStore, clock: Clock) -> None:
    engine = make(store, clock)
    with pytest.raises(UnknownSagaType, match="known: two, typed"):
        engine.start("nope", {})
    with pytest.raises(InvalidInput, match=r"^input: must be a JSON object"):
        engine.start("two", [1, 2])  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="saga_id"):
        engine.start("two", {}, saga_id="has space")
    with pytest.raises(InvalidInput, match=r"^input\.quantity: Input should be greater"):
        engine.start("typed", {"quantity": 0, "sku": "x"})
    with pytest.raises(InvalidInput, match=r"^input\.sku: Field required"):
        engine.start("typed", {"quantity": 1})
    with pytest.raises(InvalidInput, match="NUL"):
        engine.start("two", {"note": ["ok", "bad\x00"]})
    with pytest.raises(SagaNotFound):
        engine.cancel("missing")
    saga_id = engine.start("typed", {"quantity": "3", "sku": "x"}).saga_id
    assert engine.get(saga_id).input == {"quantity": 3, "sku": "x"}
    with pytest.raises(InvalidTransition, match="in status 'running': only a failed saga"):
        engine.retry(saga_id)
    with pytest.raises(InvalidInput, match="reason"):
        engine.cancel(saga_id, "why\x00")
