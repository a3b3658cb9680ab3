"""SqlSagaStore behaves the same on SQLite and PostgreSQL."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from sagakit import SagaNotFound
from sagakit.core.machine import SagaState, SagaStatus
from sagakit.store import OutboxMessage, SqlSagaStore, upgrade
from sagakit.store.schema import metadata

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def state(saga_id: str = "s1", saga_type: str = "demo") -> SagaState:
    return SagaState(saga_id, saga_type, 1, {"n": 1})


def message(saga_id: str, task_id: str, not_before: datetime = NOW) -> OutboxMessage:
    return OutboxMessage(saga_id, task_id, "svc.do", "svc", {"saga_id": saga_id}, 10.0, not_before)


def attempt(step: str = "a", n: int = 1) -> dict[str, object]:
    return {"step": step, "direction": "action", "attempt": n, "timeout": 10.0}


def create(
    store: SqlSagaStore, saga_id: str = "s1", key: str | None = None, at: datetime = NOW
) -> str | None:
    with store.begin() as conn:
        return store.insert_saga(
            conn, state(saga_id), idempotency_key=key, deadline_at=None, now=at
        )


def test_created_saga_reads_back_with_its_state(store: SqlSagaStore) -> None:
    assert create(store) is None
    record = store.get("s1")
    assert record.state == state()
    assert record.status == "pending"
    assert record.created_at == NOW
    assert record.version == 1


def test_unknown_saga_raises_not_found(store: SqlSagaStore) -> None:
    with pytest.raises(SagaNotFound):
        store.get("nope")


def test_idempotency_key_returns_the_first_saga(store: SqlSagaStore) -> None:
    assert create(store, "s1", key="k") is None
    assert create(store, "s2", key="k") == "s1"
    with pytest.raises(SagaNotFound):
        store.get("s2")


def test_save_under_lock_bumps_the_version(store: SqlSagaStore) -> None:
    create(store)
    with store.begin() as conn:
        record = store.lock(conn, "s1")
        new = replace(record.state, status=SagaStatus.COMPLETED)
        store.save(conn, new, now=NOW + timedelta(seconds=1))
    record = store.get("s1")
    assert (record.status, record.version) == ("completed", 2)
    assert record.finished_at == NOW + timedelta(seconds=1)


def test_due_messages_and_redrive(store: SqlSagaStore) -> None:
    create(store)
    later = NOW + timedelta(seconds=5)
    with store.begin() as conn:
        store.schedule(
            conn,
            [
                (message("s1", "t-now"), attempt("a")),
                (message("s1", "t-later", later), attempt("b")),
            ],
            now=NOW,
        )
    # Sent right after the commit: not due again until redrive_after has passed.
    assert store.take_due(now=NOW, redrive_after=30, limit=10) == []
    assert [m.task_id for m in store.take_due(now=later, redrive_after=30, limit=10)] == ["t-later"]
    redriven = store.take_due(now=NOW + timedelta(seconds=31), redrive_after=30, limit=10)
    assert [m.task_id for m in redriven] == ["t-now"]


def test_claim_is_granted_once(store: SqlSagaStore) -> None:
    create(store)
    with store.begin() as conn:
        store.schedule(conn, [(message("s1", "t1"), attempt())], now=NOW)
    first = store.claim("t1", worker="w1", now=NOW, grace=1.0)
    second = store.claim("t1", worker="w2", now=NOW, grace=1.0)
    assert first is not None and first.accepted
    assert second is not None and not second.accepted and second.status == "running"
    assert store.claim("unknown", worker="w1", now=NOW, grace=1.0) is None
    # A claimed message is no longer in the outbox: it is never re-sent.
    assert store.take_due(now=NOW + timedelta(hours=1), redrive_after=1, limit=10) == []
    [row] = store.attempts("s1")
    assert (row.worker, row.started_at) == ("w1", NOW)
    assert row.deadline_at == NOW + timedelta(seconds=11)


def test_expired_attempts_and_finish(store: SqlSagaStore) -> None:
    create(store)
    with store.begin() as conn:
        store.schedule(conn, [(message("s1", "t1"), attempt())], now=NOW)
    store.claim("t1", worker="w", now=NOW, grace=0.0)
    assert store.expired_attempts(now=NOW + timedelta(seconds=9), limit=5) == []
    [(expired, why)] = store.expired_attempts(now=NOW + timedelta(seconds=11), limit=5)
    assert (expired.task_id, why) == ("t1", "timed out")
    with store.begin() as conn:
        assert store.finish_attempt(conn, "t1", status="timed_out", now=NOW)
        assert not store.finish_attempt(conn, "t1", status="succeeded", now=NOW)
    assert store.attempts("s1")[0].status == "timed_out"


def test_list_is_newest_first_and_filtered(store: SqlSagaStore) -> None:
    for i in range(5):
        create(store, f"s{i}", at=NOW + timedelta(seconds=i))
    assert [r.saga_id for r in store.list_sagas(limit=3)] == ["s4", "s3", "s2"]
    assert [r.saga_id for r in store.list_sagas(limit=2, offset=3)] == ["s1", "s0"]
    after = store.list_sagas(created_after=NOW + timedelta(seconds=3))
    assert [r.saga_id for r in after] == ["s4", "s3"]
    assert store.list_sagas(status="completed") == []
    assert store.count_by_status() == {("demo", "pending"): 5}


def test_history_is_append_only_and_ordered(store: SqlSagaStore) -> None:
    create(store)
    with store.begin() as conn:
        store.append_history(
            conn,
            [
                {"saga_id": "s1", "event": "saga_started", "at": NOW},
                {"saga_id": "s1", "event": "step_scheduled", "step": "a", "attempt": 1, "at": NOW},
            ],
        )
    assert [h.event for h in store.history("s1")] == ["saga_started", "step_scheduled"]


def test_migrations_match_the_schema(store: SqlSagaStore) -> None:
    upgrade(store.engine)  # a second run changes nothing
    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    assert diff == []


def test_attempts_of_a_dead_worker_are_lost(store: SqlSagaStore) -> None:
    create(store)
    with store.begin() as conn:
        store.schedule(
            conn,
            [(message("s1", "t1"), attempt("a")), (message("s1", "t2"), attempt("b"))],
            now=NOW,
        )
    store.claim("t1", worker="w1@host", now=NOW, grace=0.0)
    store.claim("t2", worker="unknown@host", now=NOW, grace=0.0)
    store.beat("w1@host", pid=1, started_at=NOW - timedelta(minutes=1), now=NOW)
    soon = NOW + timedelta(seconds=3)
    assert store.expired_attempts(now=soon, limit=5, lost_after=5.0) == []
    # Silent for longer than lost_after: its attempt is lost; a worker that never beat is not.
    later = NOW + timedelta(seconds=6)
    [(lost, why)] = store.expired_attempts(now=later, limit=5, lost_after=5.0)
    assert (lost.task_id, why) == ("t1", "worker w1@host stopped")
    # Restarted under the same name after the attempt began: lost as well, though beating.
    store.beat("w1@host", pid=2, started_at=soon, now=later)
    [(lost, _)] = store.expired_attempts(now=later, limit=5, lost_after=5.0)
    assert lost.task_id == "t1"
    store.forget("w1@host")
    assert store.expired_attempts(now=later, limit=5, lost_after=5.0) == []
