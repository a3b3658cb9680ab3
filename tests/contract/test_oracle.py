"""Random runs through the SQL saga log agree with the in-memory ledger, event by event."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sagakit import InvalidTransition, RetryPolicy, Saga, Step
from sagakit.core.events import Event, SagaStarted
from sagakit.core.ledger import Ledger
from sagakit.core.state import SagaState
from sagakit.journal import event_of
from sagakit.messages import OutboxMessage
from tests.support.rig import Rig
from tests.support.shapes import Shape, shapes


@settings(
    max_examples=25,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(shape=shapes(), data=st.data())
def test_the_saga_log_stores_what_the_ledger_holds(
    empty_db_url: Callable[[], str], shape: Shape, data: st.DataObject
) -> None:
    rig = Rig(empty_db_url(), {"prop": shape.saga})
    saga_id = rig.engine.start("prop", shape.input).saga_id
    ledger = Ledger(SagaState(saga_id, "prop", shape.saga.version))
    ledger.send(shape.saga, _started(shape))
    outstanding: dict[str, OutboxMessage] = {m.task_id: m for m in rig.dispatcher.sent}
    for _ in range(60):
        if not outstanding:
            break
        task_id = data.draw(st.sampled_from(sorted(outstanding)), label="which")
        message = outstanding.pop(task_id)
        ok = data.draw(st.integers(0, 4), label="roll") > 0
        sent = len(rig.dispatcher.sent)
        if ok:
            rig.complete(message, {"attempt": message.kwargs["attempt"]})
        else:
            rig.fail(message)
        decision = ledger.send(shape.saga, _last_event(rig, saga_id))
        assert not decision.ignored
        for sent_now in rig.dispatcher.sent[sent:]:
            _carries_the_saga_as_stored(rig, sent_now)
        rig.clock.advance(120)  # every backoff has passed
        rig.sweeper.sweep()
        outstanding.update({m.task_id: m for m in rig.dispatcher.sent[sent:]})
        assert rig.queries.stored(saga_id) == ledger, "the log and the ledger disagree"
    assert rig.queries.replay(shape.saga, saga_id) == rig.queries.stored(saga_id)


def _carries_the_saga_as_stored(rig: Rig, message: OutboxMessage) -> None:
    """A message that carries the saga's state carries what a read of the log gives."""
    if message.state is None:
        return
    kw = message.kwargs
    carried = rig.carried(message)
    read = rig.engine.log.check(kw["saga_id"], kw["step"], kw["direction"], kw["attempt"])
    assert carried is not None and read is not None and read.current
    assert (carried.state, carried.version) == (read.snapshot.state, read.snapshot.version)
    assert carried.steps == read.snapshot.steps  # the instance, and the next to undo


def _started(shape: Shape) -> Event:
    return SagaStarted(shape.input)


def _last_event(rig: Rig, saga_id: str) -> Event:
    outputs = {s.state.name: s.output for s in rig.queries.steps(saga_id)}
    record = rig.queries.get(saga_id)
    for h in reversed(rig.queries.history(saga_id)):
        event = event_of(
            h.event,
            h.step,
            h.attempt,
            h.detail,
            input=lambda: record.input or {},
            output=outputs.get,
        )
        if event is not None:
            return event
    raise AssertionError("no event in the history")


ONCE = RetryPolicy(max_attempts=1)
UNDO_ONCE = Saga(
    "undo_once",
    [
        Step("a", "svc.a", "svc.undo_a", retry=ONCE, compensation_retry=ONCE),
        Step("b", "svc.b", "svc.undo_b", retry=ONCE, compensation_retry=ONCE),
        Step("c", "svc.c", "svc.undo_c", retry=ONCE),
    ],
)


def test_a_compensation_resolved_by_hand_is_one_event_that_replays(db_url: str) -> None:
    rig = Rig(db_url, {"undo_once": UNDO_ONCE})
    saga_id = rig.engine.start("undo_once", {}).saga_id
    rig.complete(rig.last())  # a
    rig.complete(rig.last())  # b
    rig.fail(rig.last())  # c: compensate b, then a
    rig.fail(rig.last(), "the vendor is gone")  # b's compensation, for good
    assert rig.queries.get(saga_id).status == "failed"

    with pytest.raises(InvalidTransition, match="step 'a' has no failed compensation"):
        rig.engine.resolve(saga_id, "a", "by hand", "ops")
    rig.engine.resolve(saga_id, "b", "cancelled in the vendor's console", "ana@ops")
    assert rig.last().kwargs["step"] == "a"
    assert rig.last().kwargs["direction"] == "compensation"
    rig.complete(rig.last())
    assert rig.queries.get(saga_id).status == "compensated"

    entries = [(h.event, h.step, h.from_status, h.to_status) for h in rig.queries.history(saga_id)]
    at = entries.index(("compensation_resolved", "b", "failed", "compensating"))
    assert entries[at + 1][0] == "saga_compensating"
    resolved = rig.queries.history(saga_id)[at]
    assert resolved.detail is not None
    assert (resolved.detail["by"], resolved.detail["reason"]) == (
        "ana@ops",
        "cancelled in the vendor's console",
    )
    assert resolved.attempt is None
    assert rig.queries.replay(UNDO_ONCE, saga_id) == rig.queries.stored(saga_id)
