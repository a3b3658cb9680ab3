"""The saga log's reads, heartbeats, metrics and schema behave the same on both dialects."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from sagakit import InvalidInput, SagaNotFound
from sagakit.idempotency import idempotency_keys
from sagakit.queries import Queries
from sagakit.store import make_db, reads, recovery, schema, stats, upgrade
from sagakit.store.db import Pooled
from sagakit.store.dbapi import Direct
from sagakit.store.recovery import Beat, Held
from sagakit.store.schema import metadata
from tests.support.rig import Rig


@pytest.fixture
def rig(db_url: str) -> Rig:
    return Rig(db_url)


def test_unknown_saga_raises_not_found(rig: Rig) -> None:
    with pytest.raises(SagaNotFound):
        rig.queries.get("nope")


def test_counts_by_status_are_exact_up_to_the_cap_and_say_more_past_it(rig: Rig) -> None:
    from sagakit.store import overview

    for _ in range(4):
        rig.engine.start("two", {})
    rig.clock.advance(60)
    later = rig.clock()
    done = rig.engine.start("two", {}).saga_id
    rig.complete(rig.dispatcher.for_saga(done)[0])
    rig.complete(rig.last())
    rig.engine.start("typed", {"quantity": 1, "sku": "x"})
    statuses = ("running", "completed", "failed")
    db = rig.queries.db
    assert overview.count_by_status(db, statuses) == {"running": 5, "completed": 1, "failed": 0}
    capped = overview.count_by_status(db, statuses, cap=3)
    assert capped == {"running": 4, "completed": 1, "failed": 0}  # above 3: "more than 3"
    assert overview.count_by_status(db, statuses, saga_type="two", cap=3)["running"] == 4
    assert overview.count_by_status(db, statuses, saga_type="typed")["running"] == 1
    recent = overview.count_by_status(db, statuses, created_after=later)
    assert recent == {"running": 1, "completed": 1, "failed": 0}
    assert overview.count_by_status(db, statuses, created_before=later)["running"] == 4
    assert rig.queries.counts()["running"] == 5


def test_list_is_newest_first_filtered_and_paged_by_cursor(rig: Rig) -> None:
    ids = []
    for i in range(7):
        ids.append(rig.engine.start("two", {}, idempotency_key=f"key-{i}").saga_id)
        rig.clock.advance(1)
    rig.complete(rig.dispatcher.for_saga(ids[1])[0])
    page, cursor = rig.queries.page(limit=3)
    assert [v["id"] for v in page] == ids[6:3:-1]
    seen = [v["id"] for v in page]
    while cursor is not None:
        page, cursor = rig.queries.page(limit=3, cursor=cursor)
        seen += [v["id"] for v in page]
    assert seen == ids[::-1]
    after, _ = rig.queries.page(created_after=rig.clock() - timedelta(seconds=2))
    assert [v["id"] for v in after] == [ids[6], ids[5]]
    assert rig.queries.page(status="completed")[0] == []
    assert [v["id"] for v in rig.queries.page(search="key-3")[0]] == [ids[3]]
    assert [v["id"] for v in rig.queries.page(search=ids[4])[0]] == [ids[4]]
    assert rig.queries.page(saga_type="typed")[0] == []
    with pytest.raises(InvalidInput, match="cursor"):
        rig.queries.page(cursor="not-a-cursor")


def test_detail_tells_each_attempt_from_the_history(rig: Rig) -> None:
    saga_id = rig.engine.start("two", {"n": 1}).saga_id
    rig.fail(rig.last(), "flaky")
    rig.clock.advance(2)
    rig.sweeper.sweep()
    rig.running(rig.last())
    rig.sweeper.beat()
    view = rig.queries.detail(saga_id)
    [a] = view["steps"]
    first, second = a["attempts"]
    assert (first["status"], first["error"], first["worker"]) == (
        "failed",
        "RuntimeError: flaky",
        "w1@test",
    )
    assert first["task_id"] == f"{saga_id}.01.a.fwd.1" and first["task_name"] == "svc.a"
    assert second["status"] == "running" and second["worker"] == "w1@test"
    assert second["not_before"] > first["finished_at"]  # the backoff
    rig.complete(rig.last(), {"ok": True})
    view = rig.queries.detail(saga_id)
    assert view["steps"][0]["attempts"][1]["output"] == {"ok": True}
    assert view["input"] == {"n": 1}


def test_a_connection_of_the_drivers_own_reads_what_the_pool_reads(rig: Rig, db_url: str) -> None:
    ids = [rig.engine.start("two", {"n": i}, idempotency_key=f"k{i}").saga_id for i in range(3)]
    rig.fail(rig.last(), "flaky")
    rig.running(rig.last())
    rig.sweeper.beat()
    direct = Direct(db_url)
    try:
        own = Queries(direct)
        first, cursor = rig.queries.page(limit=2)
        assert own.page(limit=2) == (first, cursor)
        assert own.page(limit=2, cursor=cursor) == rig.queries.page(limit=2, cursor=cursor)
        assert own.page(search="k1") == rig.queries.page(search="k1")
        for saga_id in ids:
            assert own.detail(saga_id) == rig.queries.detail(saga_id)
        assert own.statuses([*ids, "nope"]) == rig.queries.statuses([*ids, "nope"])
    finally:
        direct.close()


def test_a_log_never_migrated_is_told_from_other_errors(fresh_db_url: Callable[[], str]) -> None:
    url = fresh_db_url()
    db = make_db(url)
    direct = Direct(url)
    try:
        for queries in (Queries(direct), Queries(Pooled(db))):
            with pytest.raises(Exception, match="sagakit_sagas") as raised:
                queries.page()
            assert queries.missing_log(raised.value)
            assert not queries.missing_log(ValueError("not the database's"))
        upgrade(db)
        assert not Queries(direct).missing_log(raised.value)
    finally:
        direct.close()
        db.dispose()


@pytest.mark.parametrize(
    ("table", "columns"),
    [
        (schema.sagas, (*reads.LISTED, "input")),
        (schema.steps, reads.STEP_READ),
        (schema.transitions, reads.HISTORY_READ),
        (schema.workers, ("name", "running")),
    ],
)
def test_the_reads_decode_each_column_as_the_schema_types_it(
    table: sa.Table, columns: tuple[str, ...]
) -> None:
    for name in columns:
        column_type = table.c[name].type
        assert (name in reads.JSON_COLUMNS) == isinstance(column_type, sa.JSON), name
        assert (name in reads.TIME_COLUMNS) == isinstance(column_type, schema.UTCDateTime), name


def test_a_silent_worker_is_taken_once(rig: Rig) -> None:
    now = rig.clock()
    held = (Held("s.01.a.fwd.1", now.timestamp(), 10.0), Held("s.01.b.fwd.1"))
    assert recovery.beat(rig.db, Beat("w@h", 1, now, held), now) is None
    [row] = recovery.workers(rig.db)
    assert (row.name, row.held) == ("w@h", held)
    assert recovery.take_silent(rig.db, now) == []
    [taken] = recovery.take_silent(rig.db, now + timedelta(seconds=1))
    assert taken.held == held
    assert recovery.take_silent(rig.db, now + timedelta(seconds=1)) == []
    # The same name beating from a new process: the old incarnation's row comes back.
    recovery.beat(rig.db, Beat("w@h", 1, now, held), now)
    old = recovery.beat(rig.db, Beat("w@h", 2, now + timedelta(seconds=5), ()), now)
    assert old is not None and old.pid == 1 and old.held == held


def test_metrics_fold_keeps_the_counts_and_the_tail(rig: Rig) -> None:
    done = []
    for _ in range(3):
        saga_id = rig.engine.start("two", {}).saga_id
        rig.complete(rig.last())
        rig.complete(rig.last())
        done.append(saga_id)
    failing = rig.engine.start("two", {}).saga_id
    rig.engine.finish(
        rig.last().kwargs, rig.last().task_id, error="no", retryable=False, worker="w"
    )
    live = stats.snapshot(rig.db, rig.clock())
    assert live.started == {"two": 4}
    assert live.finished == {("two", "completed"): 3, ("two", "compensated"): 1}
    assert live.attempts[("two", "a", "action", "succeeded")] == 3
    assert live.attempts[("two", "a", "action", "failed")] == 1
    assert stats.fold(rig.db, rig.clock()) == 0  # nothing is older than the lag yet
    rig.clock.advance(stats.LAG.total_seconds() + 1)
    assert stats.fold(rig.db, rig.clock()) == 4
    folded = stats.snapshot(rig.db, rig.clock())
    assert (folded.started, folded.finished, folded.attempts) == (
        live.started,
        live.finished,
        live.attempts,
    )
    assert folded.saga_durations[("two", "completed")].count == 3
    rig.engine.start("two", {})  # in the tail, after the watermark
    assert stats.snapshot(rig.db, rig.clock()).started == {"two": 5}
    assert stats.fold(rig.db, rig.clock()) == 0
    assert failing not in done


def test_migrations_match_the_schema(rig: Rig) -> None:
    upgrade(rig.db)  # a second run changes nothing
    with rig.db.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    # Migration 0001 made the services' idempotency table here too: sagakit.idempotency
    # owns it now, and services sharing this database go on using it. Tables of services
    # that share the session's database (the SLAM example's) are theirs, not the log's.
    owned = {idempotency_keys.name}

    def theirs(d: tuple[object, ...]) -> bool:
        thing = d[1]
        table = getattr(thing, "table", thing)  # an index or a constraint: its table
        name = str(getattr(table, "name", ""))
        return str(d[0]).startswith("remove_") and (
            name in owned or not name.startswith("sagakit_")
        )

    assert [d for d in diff if not theirs(d)] == []
