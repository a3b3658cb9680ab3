"""Random runs through the SQL saga log agree with the in-memory ledger, event by event."""

from __future__ import annotations

from collections.abc import Callable

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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
    fresh_db_url: Callable[[], str], shape: Shape, data: st.DataObject
) -> None:
    rig = Rig(fresh_db_url(), {"prop": shape.saga})
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
