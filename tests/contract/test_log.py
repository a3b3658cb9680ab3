"""The engine and the sweeper on the saga log (SQLite and PostgreSQL), with in-memory ports."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import pytest
import sqlalchemy as sa

from sagakit import InvalidInput, InvalidTransition, SagaNotFound, UnknownSagaType
from sagakit.core.events import StepSucceeded
from sagakit.messages import seal
from sagakit.store import SqlLog
from sagakit.store.recovery import Held
from tests.support.recording import FailingDispatcher
from tests.support.rig import FAN, Rig


@pytest.fixture
def rig(db_url: str) -> Rig:
    return Rig(db_url)


def test_start_sends_the_first_step_with_ids_only(rig: Rig) -> None:
    saga_id = rig.engine.start("two", {"x": 1}).saga_id
    [message] = rig.dispatcher.sent
    assert message.task_id == f"{saga_id}.01.a.fwd.1"
    assert (message.task_name, message.queue) == ("svc.a", "celery")
    assert message.kwargs == {
        "saga_id": saga_id,
        "saga_type": "two",
        "step": "a",
        "attempt": 1,
        "direction": "action",
    }
    assert message.timeout == 10.0


def test_an_output_is_stored_once_and_never_copied_into_messages(rig: Rig) -> None:
    saga_id = rig.engine.start("two", {}).saga_id
    rig.complete(rig.last(), {"made": "a"})
    assert "results" not in rig.last().kwargs and "input" not in rig.last().kwargs
    [a, b] = rig.queries.steps(saga_id)
    assert (a.state.name, a.output, b.state.name, b.output) == ("a", {"made": "a"}, "b", None)
    assert rig.engine.log.output(saga_id, "a") == (True, {"made": "a"})
    rig.complete(rig.last(), {"made": "b"})
    assert rig.queries.get(saga_id).status == "completed"


def test_a_worker_check_tells_current_from_stale_and_unknown(rig: Rig) -> None:
    saga_id = rig.engine.start("two", {"x": 1}).saga_id
    log = rig.engine.log
    check = log.check(saga_id, "a", "action", 1)
    assert check is not None and check.current and check.input == {"x": 1}
    rig.fail(rig.last())  # attempt 1 failed: attempt 2 is scheduled
    stale = log.check(saga_id, "a", "action", 1)
    assert stale is not None and not stale.current
    assert log.check(saga_id, "nope", "action", 1) is None
    assert log.check("missing", "a", "action", 1) is None


def test_an_outcome_is_one_write_on_the_state_its_message_carries(rig: Rig) -> None:
    saga_id = rig.engine.start("two", {}).saga_id
    counts = rig.engine.log.counts
    before = (counts.transactions, counts.statements)
    snapshot = rig.check(rig.last())  # from the message: no read of the log
    assert (counts.transactions, counts.statements) == before
    assert snapshot is not None and set(snapshot.steps) == {"a"} and snapshot.version == 0
    rig.complete(rig.last(), {"made": "a"}, snapshot)
    spent = (counts.transactions - before[0], counts.statements - before[1])
    postgres = rig.engine.log.postgres
    # PostgreSQL: one statement that commits on its own; SQLite: one statement per row.
    assert spent == (1, 1) if postgres else spent[0] == 1
    carried = rig.check(rig.last())
    assert carried is not None and set(carried.steps) == {"a", "b"}  # b, and a to undo
    stored = rig.queries.stored(saga_id)
    assert stored.steps["a"].order == 1 and stored.steps["b"].status == "running"
    assert rig.queries.replay(rig.engine.sagas["two"], saga_id) == stored


def test_compensations_run_on_the_state_their_messages_carry(rig: Rig) -> None:
    saga_id = rig.engine.start("undo", {}).saga_id
    for _ in "abc":
        rig.complete(rig.last())
    counts = rig.engine.log.counts
    before = (counts.transactions, counts.statements)
    rig.fail(rig.last())  # d fails for good: c, b and a are undone, in that order
    undone = []
    for _ in "cba":
        message = rig.last()
        assert message.kwargs["direction"] == "compensation"
        snapshot = rig.carried(message)  # the next to undo rides along: no read
        assert snapshot is not None
        undone.append(message.kwargs["step"])
        rig.complete(message, snapshot=snapshot)
    assert undone == ["c", "b", "a"]
    assert rig.queries.get(saga_id).status == "compensated"
    if rig.engine.log.postgres:  # one statement per outcome, reads included
        spent = (counts.transactions - before[0], counts.statements - before[1])
        assert spent == (4, 4)
    stored = rig.queries.stored(saga_id)
    assert rig.queries.replay(rig.engine.sagas["undo"], saga_id) == stored


def test_the_carried_state_is_trusted_only_under_the_logs_seal(rig: Rig) -> None:
    rig.engine.start("two", {})
    message = rig.last()
    assert message.state is not None and rig.carried(message) is not None
    mac, _, state = message.state.partition(".")
    kw = message.kwargs
    forged = [
        replace(message, state=seal(b"a guessed key", message.task_id, kw, state)),
        replace(message, state=f"{mac}.{state.replace('running', 'succeeded')}"),
        replace(message, kwargs={**kw, "item": {"robots": 99}}),
        replace(message, kwargs={**kw, "attempt": 2}),
        replace(message, task_id=message.task_id.replace("fwd.1", "fwd.2")),
        replace(message, state=state),  # no seal at all
    ]
    assert [rig.carried(m) for m in forged] == [None] * len(forged)
    # The key is the log's: another process on the same database seals alike.
    assert SqlLog(rig.engine.log.db).state_key() == rig.engine.log.state_key()


def test_an_outcome_read_before_a_cancel_is_applied_to_the_cancelled_saga(rig: Rig) -> None:
    saga_id = rig.engine.start("two", {}).saga_id
    rig.complete(rig.last())
    b = rig.last()
    snapshot = rig.check(b)  # the worker reads, then runs b ...
    rig.engine.cancel(saga_id, "no longer wanted")  # ... while an operator cancels
    history = len(rig.queries.history(saga_id))
    rig.complete(b, {"made": "b"}, snapshot)  # written from the fresh read, under the lock
    stored = rig.queries.stored(saga_id)
    assert stored.state.status == "compensating"
    assert stored.state.reason == "cancelled: no longer wanted"
    # b took effect after the cancel: it is undone first, then a.
    assert rig.last().task_id == f"{saga_id}.02.b.comp.1"
    assert [h.event for h in rig.queries.history(saga_id)[history:]] == ["step_completed"]
    assert rig.queries.replay(rig.engine.sagas["two"], saga_id) == stored


def test_an_outcome_read_before_a_duplicate_was_recorded_is_ignored(rig: Rig) -> None:
    saga_id = rig.engine.start("two", {}).saga_id
    a = rig.last()
    first, second = rig.check(a), rig.check(a)  # delivered twice, both read before either ends
    rig.complete(a, {"run": 1}, first)
    before = (rig.queries.stored(saga_id), len(rig.queries.history(saga_id)))
    rig.complete(a, {"run": 2}, second)
    assert (rig.queries.stored(saga_id), len(rig.queries.history(saga_id))) == before
    assert rig.engine.log.output(saga_id, "a") == (True, {"run": 1})


def test_broker_outage_is_covered_by_the_sweeper(rig: Rig) -> None:
    rig.engine.dispatcher = FailingDispatcher()
    saga_id = rig.engine.start("two", {}).saga_id
    rig.engine.dispatcher = rig.dispatcher
    assert rig.sweeper.sweep().sent == 1
    assert [m.task_id for m in rig.dispatcher.sent] == [f"{saga_id}.01.a.fwd.1"]
    assert rig.sweeper.sweep().sent == 0


def test_retries_that_fall_due_together_are_sent_once_each_in_one_sweep(rig: Rig) -> None:
    ids = [rig.engine.start("two", {}).saga_id for _ in range(5)]
    for message in list(rig.dispatcher.sent):
        rig.fail(message)  # attempt 2 waits out its backoff in the step row
    sent = len(rig.dispatcher.sent)
    rig.clock.advance(2)
    assert rig.sweeper.sweep().sent == 5
    retried = sorted(m.task_id for m in rig.dispatcher.sent[sent:])
    assert retried == sorted(f"{saga_id}.01.a.fwd.2" for saga_id in ids)
    assert rig.sweeper.sweep().sent == 0  # each was marked sent, once
    steps = [s for saga_id in ids for s in rig.queries.steps(saga_id)]
    assert {(s.state.attempt, s.send_count) for s in steps} == {(2, 1)}


def test_a_message_waiting_in_a_busy_queue_is_never_sent_again(rig: Rig) -> None:
    rig.engine.start("two", {})
    rig.broker.depths["celery"] = 5000
    for _ in range(10):
        rig.clock.advance(300)
        report = rig.sweeper.sweep()
        assert (report.sent, report.resent) == (0, 0)
    assert len(rig.dispatcher.sent) == 1


def test_an_unclaimed_message_whose_queue_is_empty_is_sent_again_with_backoff(rig: Rig) -> None:
    rig.engine.start("two", {})
    first = rig.last().task_id
    rig.clock.advance(29)
    assert rig.sweeper.sweep().resent == 0
    rig.clock.advance(2)
    assert rig.sweeper.sweep().resent == 1
    rig.sweeper.sweep()  # sends what was marked
    assert [m.task_id for m in rig.dispatcher.sent] == [first, first]  # same attempt, same id
    rig.clock.advance(31)
    assert rig.sweeper.sweep().resent == 0  # the second re-send waits twice as long
    rig.clock.advance(30)
    assert rig.sweeper.sweep().resent == 1


def test_a_message_a_live_worker_holds_is_not_sent_again(rig: Rig) -> None:
    rig.engine.start("two", {})
    rig.held = [Held(rig.last().task_id)]
    rig.clock.advance(120)
    for _ in range(3):
        rig.sweeper.sweep()
    assert len(rig.dispatcher.sent) == 1


def test_when_the_broker_lost_its_queues_what_nobody_holds_is_sent_again(rig: Rig) -> None:
    ids = [rig.engine.start("two", {}).saga_id for _ in range(3)]
    held = f"{ids[0]}.01.a.fwd.1"
    rig.held = [Held(held, rig.clock().timestamp(), 10.0)]
    rig.clock.advance(1)
    rig.broker.epoch_at = rig.clock()  # the queues were emptied, then ...
    rig.clock.advance(1)
    later = [rig.engine.start("two", {}).saga_id for _ in range(2)]  # ... these were sent
    rig.broker.depths["celery"] = 2  # new traffic already: depth says nothing here
    report = rig.sweeper.sweep()
    assert report.resent == 2
    resent = [m.task_id for m in rig.dispatcher.sent[5:]]
    assert sorted(resent) == sorted(f"{s}.01.a.fwd.1" for s in ids[1:])
    assert not {f"{s}.01.a.fwd.1" for s in later} & set(resent)
    for _ in range(3):  # the same epoch: nothing more is lost
        assert rig.sweeper.sweep().resent == 0


def test_a_lost_backlog_is_sent_again_a_batch_per_sweep_past_held_messages(rig: Rig) -> None:
    rig.sweeper.batch = 4
    ids = [rig.engine.start("two", {}).saga_id for _ in range(10)]
    rig.held = [Held(f"{s}.01.a.fwd.1", rig.clock().timestamp(), 10.0) for s in ids[:5]]
    rig.clock.advance(1)
    rig.broker.epoch_at = rig.clock()
    resent = [rig.sweeper.sweep().resent for _ in range(5)]
    assert sum(resent) == 5 and max(resent) <= 4  # a batch of 4 rows per sweep
    assert resent[3:] == [0, 0]  # 10 rows: the pass ended with the third batch
    again = {m.task_id for m in rig.dispatcher.sent[10:]}
    assert again == {f"{s}.01.a.fwd.1" for s in ids[5:]}


def test_a_dead_workers_tasks_time_out_or_are_sent_again(rig: Rig) -> None:
    running_id = rig.engine.start("two", {}).saga_id
    waiting_id = rig.engine.start("two", {}).saga_id
    running, waiting = rig.dispatcher.sent
    rig.held = [Held(running.task_id, rig.clock().timestamp(), 10.0), Held(waiting.task_id)]
    rig.sweeper.beat()
    other = rig.sweeper_for("w2@test", pid=200)
    rig.held = []
    rig.clock.advance(31)  # w1 has been silent for longer than worker_lost_after
    report = other.sweep()
    assert report.lost == 2
    assert rig.queries.stored(running_id).steps["a"].attempt == 2  # timed out: retried
    rig.clock.advance(2)  # past the retry's backoff
    other.sweep()
    sent = [m.task_id for m in rig.dispatcher.sent[2:]]
    assert f"{running_id}.01.a.fwd.2" in sent and waiting.task_id in sent
    assert rig.queries.stored(waiting_id).steps["a"].attempt == 1  # never started: same one


def test_a_restarted_worker_takes_over_its_previous_incarnation(rig: Rig) -> None:
    saga_id = rig.engine.start("two", {}).saga_id
    rig.running(rig.last())
    rig.sweeper.beat()
    rig.held = []
    again = rig.sweeper_for("w1@test", pid=101)  # the same name, a new process
    again.beat()
    assert rig.queries.stored(saga_id).steps["a"].attempt == 2


def test_a_step_that_overruns_its_timeout_is_retried_then_compensated(rig: Rig) -> None:
    saga_id = rig.engine.start("two", {}).saga_id
    rig.complete(rig.last())
    rig.running(rig.last())  # b attempt 1 starts, then hangs
    rig.clock.advance(10.5)
    assert rig.sweeper.sweep().timed_out == 0  # within timeout + grace
    rig.clock.advance(1)
    assert rig.sweeper.sweep().timed_out == 1
    assert rig.sweeper.sweep().timed_out == 0  # once per attempt
    rig.clock.advance(2)  # past the backoff
    rig.sweeper.sweep()
    assert rig.last().task_id == f"{saga_id}.02.b.fwd.2"
    rig.running(rig.last())
    rig.clock.advance(12)
    rig.sweeper.sweep()
    # b may have taken effect (it timed out), so it is compensated before a.
    assert rig.queries.get(saga_id).status == "compensating"
    assert rig.last().task_id == f"{saga_id}.02.b.comp.1"


def test_a_stale_outcome_changes_nothing(rig: Rig) -> None:
    saga_id = rig.engine.start("two", {}).saga_id
    rig.complete(rig.last())
    before = (rig.queries.stored(saga_id), len(rig.queries.history(saga_id)))
    decision = rig.engine.record(saga_id, StepSucceeded("a", 1))
    assert decision.ignored
    assert (rig.queries.stored(saga_id), len(rig.queries.history(saga_id))) == before


def test_saga_deadline_compensates(rig: Rig) -> None:
    saga_id = rig.engine.start("two", {}).saga_id
    rig.complete(rig.last())
    rig.clock.advance(61)
    assert rig.sweeper.sweep().deadlines == 1
    assert rig.queries.get(saga_id).reason == "deadline exceeded"


def test_every_transition_is_published_and_stored(rig: Rig) -> None:
    saga_id = rig.engine.start("two", {}).saga_id
    rig.complete(rig.last())
    events = [e.event for e in rig.publisher.entries]
    assert events == ["saga_started", "step_completed"]
    history = rig.queries.history(saga_id)
    assert [h.event for h in history] == events
    [scheduled] = (history[1].detail or {})["scheduled"]
    assert (scheduled["step"], scheduled["attempt"], scheduled["task_id"]) == (
        "b",
        1,
        f"{saga_id}.02.b.fwd.1",
    )
    completed = rig.queries.history(saga_id)[1]
    assert completed.started_at is not None and completed.detail is not None
    assert completed.detail["task_id"] == f"{saga_id}.01.a.fwd.1"
    assert completed.detail["worker"] == "w1@test"


def test_replaying_the_history_gives_the_stored_state(rig: Rig) -> None:
    saga_id = rig.engine.start("fan", {}).saga_id
    rig.complete(rig.last(), {"items": ["p", "q", "r"]})
    branches = rig.dispatcher.sent[-3:]
    rig.complete(branches[0])
    rig.fail(branches[1])  # retried after a backoff
    rig.clock.advance(5)
    rig.sweeper.sweep()
    assert rig.last().task_id.endswith(".02.each-1.fwd.2")
    rig.complete(rig.last())
    rig.engine.record(saga_id, StepSucceeded("each[0]", 1))  # a duplicate: ignored
    rig.complete(branches[2])
    x, y = rig.dispatcher.sent[-2:]
    rig.fail(x, "x broke")  # no retries: compensation waits for y
    rig.complete(y, {"y": 1})
    undone = []
    for _ in range(10):
        if rig.queries.get(saga_id).status != "compensating":
            break
        undone.append(rig.last().kwargs["step"])
        rig.complete(rig.last())
    assert undone == ["y", "each[2]", "each[1]", "each[0]", "a"]
    assert rig.queries.get(saga_id).status == "compensated"
    assert rig.queries.replay(FAN, saga_id) == rig.queries.stored(saga_id)


def test_a_transition_writes_the_same_whatever_the_fan_out_width(
    fresh_db_url: Callable[[], str],
) -> None:
    statements = {}
    for width in (5, 200):
        rig = Rig(fresh_db_url())
        saga_id = rig.engine.start("fan", {}).saga_id
        rig.complete(rig.last(), {"items": list(range(width))})
        branches = rig.dispatcher.sent[-width:]
        log = rig.engine.log
        before = log.counts.statements
        for message in branches[:-1]:
            rig.complete(message)
        statements[width] = (log.counts.statements - before) / (width - 1)
        with rig.db.connect() as conn:
            head = conn.execute(sa.text("SELECT sources FROM sagakit_sagas")).scalar()
        assert head is None  # the fanned-out list is not kept in the head
        rig.complete(branches[-1])
        assert rig.queries.stored(saga_id).state.stage == 2
    assert statements[5] == statements[200]


def test_bad_requests_raise_clear_errors(rig: Rig) -> None:
    engine = rig.engine
    with pytest.raises(UnknownSagaType, match="known: fan, two, typed"):
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
    deep: dict[str, object] = {}
    for _ in range(900):
        deep = {"d": deep}
    with pytest.raises(InvalidInput, match="nest deeper than 64"):
        engine.start("two", deep)
    with pytest.raises(SagaNotFound):
        engine.cancel("missing")
    saga_id = engine.start("typed", {"quantity": "3", "sku": "x"}).saga_id
    assert rig.queries.get(saga_id).input == {"quantity": 3, "sku": "x"}
    with pytest.raises(InvalidTransition, match="in status 'running': only a failed saga"):
        engine.retry(saga_id)
    with pytest.raises(InvalidInput, match="reason"):
        engine.cancel(saga_id, "why\x00")


def test_a_repeated_idempotency_key_returns_the_first_saga(rig: Rig) -> None:
    first = rig.engine.start("two", {}, idempotency_key="order-7")
    again = rig.engine.start("two", {"other": 1}, idempotency_key="order-7")
    assert (again.saga_id, again.created, first.created) == (first.saga_id, False, True)
    assert len(rig.dispatcher.sent) == 1
