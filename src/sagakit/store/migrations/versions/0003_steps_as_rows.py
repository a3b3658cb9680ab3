"""Step instances as rows, outputs stored once, the outbox folded into them, metrics rollup.

The saga row keeps a small head instead of a JSON snapshot of every step and output; each
step instance becomes a row of ``sagakit_steps`` (its state, its output and the message of
its current attempt); attempts are told by the history, whose outcome entries gain the
attempt's start time, worker and task id. The saga row keeps its ``version``, which every
transition raises (a write made from an earlier read of the saga changes nothing). The rows
of sagas in flight are carried over, so they go on where they were.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

from sagakit.store.schema import UTCDateTime

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

Json = sa.JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")
BUSY = "status IN ('running', 'compensating')"
OUTCOMES = {
    "step_completed": "action",
    "step_failed": "action",
    "step_timed_out": "action",
    "step_compensated": "compensation",
    "compensation_failed": "compensation",
}


def upgrade() -> None:
    # Plain ALTER TABLE on both dialects (SQLite >= 3.35 drops columns): recreating
    # sagakit_sagas, as batch mode would on SQLite, would cascade-delete its children.
    _create_tables()
    for name, kind, default in (
        ("stage", sa.Integer, "-1"),
        ("seq", sa.Integer, "0"),
        ("pivot_passed", sa.Boolean, sa.false()),
        ("open_steps", sa.Integer, "0"),
        ("busy_steps", sa.Integer, "0"),
    ):
        op.add_column(
            "sagakit_sagas", sa.Column(name, kind, nullable=False, server_default=default)
        )
    op.add_column("sagakit_sagas", sa.Column("cause", sa.Text))
    op.add_column("sagakit_sagas", sa.Column("cause_step", sa.String(80)))
    op.add_column("sagakit_sagas", sa.Column("sources", Json))
    op.add_column("sagakit_transitions", sa.Column("started_at", UTCDateTime))
    op.add_column("sagakit_workers", sa.Column("running", Json))
    op.add_column("sagakit_workers", sa.Column("reserved", Json))
    _carry_over(op.get_bind())
    for index in (
        "ix_sagakit_sagas_created",
        "ix_sagakit_sagas_status_created",
        "ix_sagakit_sagas_deadline",
    ):
        op.drop_index(index, table_name="sagakit_sagas")
    op.execute("ALTER TABLE sagakit_sagas DROP COLUMN state")
    op.drop_table("sagakit_outbox")
    op.drop_table("sagakit_step_attempts")
    _create_indexes()


def _create_tables() -> None:
    op.create_table(
        "sagakit_steps",
        sa.Column(
            "saga_id",
            sa.String(64),
            sa.ForeignKey("sagakit_sagas.saga_id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("name", sa.String(80), primary_key=True),
        sa.Column("step", sa.String(64), nullable=False),
        sa.Column("stage", sa.Integer, nullable=False),
        sa.Column("idx", sa.Integer),
        sa.Column("item", Json),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("attempt_base", sa.Integer, nullable=False),
        sa.Column("comp_attempt", sa.Integer, nullable=False),
        sa.Column("comp_base", sa.Integer, nullable=False),
        sa.Column("ord", sa.Integer),
        sa.Column("maybe_effect", sa.Boolean, nullable=False),
        sa.Column("error", sa.Text),
        sa.Column("output", Json),
        sa.Column("task_id", sa.String(200), nullable=False),
        sa.Column("task_name", sa.String(200), nullable=False),
        sa.Column("queue", sa.String(100), nullable=False),
        sa.Column("not_before", UTCDateTime, nullable=False),
        sa.Column("sent_at", UTCDateTime),
        sa.Column("send_count", sa.Integer, nullable=False),
        postgresql_with={"fillfactor": 80},
    )
    op.create_table(
        "sagakit_metrics",
        sa.Column("kind", sa.String(20), primary_key=True),
        sa.Column("saga_type", sa.String(64), primary_key=True),
        sa.Column("step", sa.String(64), primary_key=True),
        sa.Column("direction", sa.String(12), primary_key=True),
        sa.Column("status", sa.String(20), primary_key=True),
        sa.Column("count", sa.BigInteger, nullable=False),
        sa.Column("total", sa.Float, nullable=False),
        sa.Column("buckets", Json),
    )
    state = op.create_table(
        "sagakit_metrics_state",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("watermark", UTCDateTime, nullable=False),
    )
    op.bulk_insert(state, [{"id": 1, "watermark": _epoch()}])


def _create_indexes() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE sagakit_sagas SET (fillfactor = 70)")
        op.execute("ALTER TABLE sagakit_transitions ALTER COLUMN id TYPE BIGINT")
    for table, name, columns, predicate in (
        ("sagakit_sagas", "ix_sagakit_sagas_created", ["created_at", "saga_id"], None),
        (
            "sagakit_sagas",
            "ix_sagakit_sagas_status_created",
            ["status", "created_at", "saga_id"],
            None,
        ),
        (
            "sagakit_sagas",
            "ix_sagakit_sagas_type_created",
            ["saga_type", "created_at", "saga_id"],
            None,
        ),
        ("sagakit_sagas", "ix_sagakit_sagas_finished", ["finished_at"], "finished_at IS NOT NULL"),
        (
            "sagakit_sagas",
            "ix_sagakit_sagas_key",
            ["idempotency_key"],
            "idempotency_key IS NOT NULL",
        ),
        (
            "sagakit_sagas",
            "ix_sagakit_sagas_deadline",
            ["deadline_at"],
            "deadline_at IS NOT NULL AND status IN ('pending', 'running')",
        ),
        ("sagakit_steps", "ix_sagakit_steps_undo", ["saga_id", "ord"], "ord IS NOT NULL"),
        ("sagakit_steps", "ix_sagakit_steps_unsent", ["not_before"], f"sent_at IS NULL AND {BUSY}"),
        ("sagakit_steps", "ix_sagakit_steps_busy", ["sent_at"], BUSY),
        (
            "sagakit_transitions",
            "ix_sagakit_transitions_outcomes",
            ["at"],
            "started_at IS NOT NULL",
        ),
    ):
        where: dict[str, Any] = {}
        if predicate:
            where = {"sqlite_where": sa.text(predicate), "postgresql_where": sa.text(predicate)}
        op.create_index(name, table, columns, **where)


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def _carry_over(conn: sa.Connection) -> None:
    """Rewrite every saga's snapshot as a head and step rows; enrich outcome entries."""
    meta = sa.MetaData()
    sagas = sa.Table("sagakit_sagas", meta, autoload_with=conn)
    attempts = sa.Table("sagakit_step_attempts", meta, autoload_with=conn)
    outbox = sa.Table("sagakit_outbox", meta, autoload_with=conn)
    history = sa.Table("sagakit_transitions", meta, autoload_with=conn)
    steps = sa.Table("sagakit_steps", meta, autoload_with=conn)
    rows = conn.execute(sa.select(sagas.c.saga_id, sagas.c.state, sagas.c.input)).all()
    for saga_id, raw_state, raw_input in rows:
        state = _json(raw_state) or {}
        tried = conn.execute(
            sa.select(attempts).where(attempts.c.saga_id == saga_id).order_by(attempts.c.id)
        ).all()
        queued = {
            r.task_id: r
            for r in conn.execute(sa.select(outbox).where(outbox.c.saga_id == saga_id)).all()
        }
        head, step_rows = _convert(state, _json(raw_input) or {}, tried, queued)
        conn.execute(sagas.update().where(sagas.c.saga_id == saga_id).values(**head))
        if step_rows:
            conn.execute(steps.insert(), [{"saga_id": saga_id, **r} for r in step_rows])
        _enrich_history(conn, history, saga_id, tried)


def _convert(
    state: Mapping[str, Any],
    data: Mapping[str, Any],
    tried: Sequence[Any],
    queued: Mapping[str, Any],
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    instances = list(state.get("steps") or [])
    stage = state.get("stage", -1)
    pivot_passed = bool(state.get("pivot_passed"))
    # Every path a later for_each could read: unknown here without the definitions, so keep
    # each key of the input and of every step output; the next stage drops what it does not use.
    sources: dict[str, Any] = {f"input.{k}": v for k, v in data.items()}
    for st in instances:
        if isinstance(st.get("output"), Mapping) and st.get("index") is None:
            sources.update({f"{st['name']}.{k}": v for k, v in st["output"].items()})
    rows = []
    for st in instances:
        status = st["status"]
        mine = [a for a in tried if a.step == st["name"]]
        direction = "compensation" if status.startswith("compensat") else "action"
        current = next((a for a in reversed(mine) if a.direction == direction), None)
        if current is None:
            current = mine[-1] if mine else None
        waiting = status == "succeeded" or (status == "failed" and st.get("maybe_effect"))
        message = queued.get(current.task_id) if current is not None else None
        rows.append(
            {
                "name": st["name"],
                "step": st["step"],
                "stage": st["stage"],
                "idx": st.get("index"),
                "item": st.get("item"),
                "status": status,
                "attempt": st.get("attempt", 1),
                "attempt_base": st.get("attempt_base", 0),
                "comp_attempt": st.get("compensation_attempt", 0),
                "comp_base": st.get("compensation_base", 0),
                # Before the pivot every step that took effect is compensatable.
                "ord": st.get("order") if waiting and not pivot_passed else None,
                "maybe_effect": bool(st.get("maybe_effect")),
                "error": st.get("error"),
                "output": st.get("output"),
                "task_id": current.task_id if current is not None else "",
                "task_name": current.task_name if current is not None else "",
                "queue": current.queue if current is not None else "",
                "not_before": current.not_before if current is not None else _epoch(),
                "sent_at": (message.sent_at if message is not None else current.scheduled_at)
                if current is not None
                else None,
                "send_count": message.send_count if message is not None else 1,
            }
        )
    busy = sum(r["status"] in ("running", "compensating") for r in rows)
    open_steps = sum(r["stage"] == stage and r["status"] != "succeeded" for r in rows)
    head = {
        "stage": stage,
        "seq": state.get("seq", 0),
        "pivot_passed": pivot_passed,
        "cause": state.get("cause"),
        "cause_step": state.get("cause_step"),
        "open_steps": open_steps,
        "busy_steps": busy,
        "sources": sources or None,
    }
    return head, rows


def _epoch() -> Any:
    from datetime import UTC, datetime

    return datetime(1970, 1, 1, tzinfo=UTC)


def _enrich_history(
    conn: sa.Connection, history: sa.Table, saga_id: str, tried: Sequence[Any]
) -> None:
    by_key = {(a.step, a.direction, a.attempt): a for a in tried}
    entries = conn.execute(
        sa.select(
            history.c.id, history.c.event, history.c.step, history.c.attempt, history.c.detail
        ).where(history.c.saga_id == saga_id, history.c.event.in_(list(OUTCOMES)))
    ).all()
    for entry in entries:
        found = by_key.get((entry.step, OUTCOMES[entry.event], entry.attempt))
        if found is None:
            continue
        detail = dict(_json(entry.detail) or {})
        detail.update(task_id=found.task_id, worker=found.worker)
        if found.traceback:
            detail["traceback"] = found.traceback
        if found.direction == "compensation" and found.output is not None:
            detail["output"] = _json(found.output)
        conn.execute(
            history.update()
            .where(history.c.id == entry.id)
            .values(detail=detail, started_at=found.started_at or found.scheduled_at)
        )


def downgrade() -> None:
    raise NotImplementedError("the saga log cannot go back to snapshots; restore a backup")
