"""A saga log written by the snapshot schema (revision 0002) upgrades and goes on."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB

from sagakit.store import make_db, upgrade
from sagakit.store.schema import UTCDateTime
from tests.support.rig import Rig

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
Json = sa.JSON().with_variant(JSONB(), "postgresql")


def _old_tables() -> dict[str, sa.Table]:
    meta = sa.MetaData()
    return {
        "sagas": sa.Table(
            "sagakit_sagas",
            meta,
            sa.Column("saga_id", sa.String(64), primary_key=True),
            sa.Column("saga_type", sa.String(64)),
            sa.Column("definition_version", sa.Integer),
            sa.Column("status", sa.String(20)),
            sa.Column("input", Json),
            sa.Column("state", Json),
            sa.Column("reason", sa.Text),
            sa.Column("failed_step", sa.String(80)),
            sa.Column("idempotency_key", sa.String(200)),
            sa.Column("version", sa.Integer),
            sa.Column("created_at", UTCDateTime),
            sa.Column("updated_at", UTCDateTime),
            sa.Column("finished_at", UTCDateTime),
            sa.Column("deadline_at", UTCDateTime),
        ),
        "attempts": sa.Table(
            "sagakit_step_attempts",
            meta,
            sa.Column("id", sa.Integer, primary_key=True),
            sa.Column("saga_id", sa.String(64)),
            sa.Column("step", sa.String(80)),
            sa.Column("direction", sa.String(12)),
            sa.Column("attempt", sa.Integer),
            sa.Column("task_id", sa.String(200)),
            sa.Column("task_name", sa.String(200)),
            sa.Column("queue", sa.String(100)),
            sa.Column("status", sa.String(20)),
            sa.Column("worker", sa.String(200)),
            sa.Column("output", Json),
            sa.Column("scheduled_at", UTCDateTime),
            sa.Column("not_before", UTCDateTime),
            sa.Column("started_at", UTCDateTime),
            sa.Column("finished_at", UTCDateTime),
        ),
        "outbox": sa.Table(
            "sagakit_outbox",
            meta,
            sa.Column("id", sa.Integer, primary_key=True),
            sa.Column("saga_id", sa.String(64)),
            sa.Column("task_id", sa.String(200)),
            sa.Column("task_name", sa.String(200)),
            sa.Column("queue", sa.String(100)),
            sa.Column("kwargs", Json),
            sa.Column("not_before", UTCDateTime),
            sa.Column("sent_at", UTCDateTime),
            sa.Column("send_count", sa.Integer),
        ),
        "history": sa.Table(
            "sagakit_transitions",
            meta,
            sa.Column("id", sa.Integer, primary_key=True),
            sa.Column("saga_id", sa.String(64)),
            sa.Column("event", sa.String(40)),
            sa.Column("from_status", sa.String(20)),
            sa.Column("to_status", sa.String(20)),
            sa.Column("step", sa.String(80)),
            sa.Column("attempt", sa.Integer),
            sa.Column("detail", Json),
            sa.Column("at", UTCDateTime),
        ),
    }


def _step(name: str, status: str, order: int | None, output: Any = None) -> dict[str, Any]:
    return {
        "name": name,
        "step": name,
        "stage": 0 if name == "a" else 1,
        "index": None,
        "item": None,
        "status": status,
        "attempt": 1,
        "attempt_base": 0,
        "compensation_attempt": 0,
        "compensation_base": 0,
        "order": order,
        "maybe_effect": False,
        "output": output,
        "error": None,
    }


def _write_old_saga(conn: sa.Connection, tables: dict[str, sa.Table]) -> None:
    state = {
        "saga_id": "old-1",
        "saga_type": "two",
        "version": 1,
        "input": {"n": 7},
        "status": "running",
        "stage": 1,
        "steps": [_step("a", "succeeded", 1, {"made": "a"}), _step("b", "running", None)],
        "seq": 1,
        "pivot_passed": False,
        "reason": None,
        "failed_step": None,
        "cause": None,
        "cause_step": None,
    }
    conn.execute(
        tables["sagas"]
        .insert()
        .values(
            saga_id="old-1",
            saga_type="two",
            definition_version=1,
            status="running",
            input={"n": 7},
            state=state,
            version=3,
            created_at=T0,
            updated_at=T0,
        )
    )
    for i, (step, status) in enumerate((("a", "succeeded"), ("b", "running")), start=1):
        conn.execute(
            tables["attempts"]
            .insert()
            .values(
                id=i,
                saga_id="old-1",
                step=step,
                direction="action",
                attempt=1,
                task_id=f"old-1.0{i}.{step}.fwd.1",
                task_name=f"svc.{step}",
                queue="celery",
                status=status,
                worker="old@host",
                output={"made": "a"} if step == "a" else None,
                scheduled_at=T0,
                not_before=T0,
                started_at=T0 + timedelta(seconds=i),
                finished_at=T0 + timedelta(seconds=2) if step == "a" else None,
            )
        )
    for event, step in (("saga_started", None), ("step_completed", "a")):
        conn.execute(
            tables["history"]
            .insert()
            .values(
                saga_id="old-1",
                event=event,
                step=step,
                attempt=1 if step else None,
                at=T0 + timedelta(seconds=2),
            )
        )


def test_a_saga_in_flight_goes_on_after_the_upgrade(db_url: str) -> None:
    db = make_db(db_url)
    with db.begin() as conn:  # start from an empty database at revision 0002
        for table in ("sagakit_transitions", "sagakit_steps", "sagakit_sagas"):
            conn.execute(
                sa.text(
                    f"DROP TABLE IF EXISTS {table} CASCADE"
                    if db.dialect.name == "postgresql"
                    else f"DROP TABLE IF EXISTS {table}"
                )
            )
        for table in (
            "sagakit_metrics",
            "sagakit_metrics_state",
            "sagakit_workers",
            "sagakit_keys",
            "alembic_version",
        ):
            conn.execute(sa.text(f"DROP TABLE IF EXISTS {table}"))
    upgrade(db, "0002")
    tables = _old_tables()
    with db.begin() as conn:
        _write_old_saga(conn, tables)
    upgrade(db)
    rig = Rig(db_url)
    stored = rig.queries.stored("old-1")
    assert (stored.state.stage, stored.state.open, stored.state.busy) == (1, 1, 1)
    assert stored.steps["a"].order == 1 and stored.steps["b"].status.value == "running"
    assert rig.engine.log.output("old-1", "a") == (True, {"made": "a"})
    completed = [h for h in rig.queries.history("old-1") if h.event == "step_completed"]
    assert completed[0].started_at == T0 + timedelta(seconds=1)
    assert completed[0].detail and completed[0].detail["worker"] == "old@host"
    b = {"saga_id": "old-1", "saga_type": "two", "step": "b", "attempt": 1, "direction": "action"}
    rig.engine.finish(b, "old-1.02.b.fwd.1", output={"made": "b"})  # type: ignore[arg-type]
    assert rig.queries.get("old-1").status == "completed"
    db.dispose()
