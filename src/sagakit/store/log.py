"""The saga log's hot path: one transaction per transition, statements prepared once.

A transition locks the saga's row (``SELECT ... FOR NO KEY UPDATE`` on PostgreSQL;
``BEGIN IMMEDIATE`` takes SQLite's write lock), reads the step rows `decide` needs (the one
an outcome reports on and the next to undo: index lookups), and writes what the decision
changed: the head, the new and changed step rows (each carrying the message of its current
attempt: the outbox), and the history entries. Two round trips on PostgreSQL: the lock and
the reads go in one pipeline, the writes and the commit in another.

These statements run on the raw DB-API connections of a SQLAlchemy pool rather than
through SQLAlchemy's expression layer: measured on this path, building and executing Core
constructs cost 2.1 ms of client CPU per transition, the same SQL as prepared psycopg
statements in a pipeline 0.6 ms (docs/architecture.md, "Costs").
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from ..core.codec import HEAD_COLUMNS, STEP_COLUMNS, head_from, head_row, step_from, step_row
from ..core.errors import SagaNotFound
from ..core.events import Decision, Needs
from ..core.state import SagaState, StepState
from ..journal import Entry
from ..messages import OutboxMessage

SAGA_COLUMNS = ("saga_id", "saga_type", "definition_version", *HEAD_COLUMNS)
MESSAGE_COLUMNS = ("task_id", "task_name", "queue", "not_before", "sent_at", "send_count")
HISTORY_COLUMNS = (
    "saga_id",
    "event",
    "from_status",
    "to_status",
    "step",
    "attempt",
    "detail",
    "at",
    "started_at",
)
INLINE_INPUT = 8192
"""Inputs up to this many bytes come with an attempt's check; larger ones load on demand."""

_JSON_COLUMNS = frozenset({"sources", "item", "output", "input", "detail"})
_TIME_COLUMNS = frozenset(
    {"at", "started_at", "not_before", "sent_at", "created_at", "updated_at", "finished_at"}
).union({"deadline_at"})
_STEPS = ", ".join(STEP_COLUMNS)


@dataclass
class Counts:
    """Transactions and statements this process ran on the saga log (for the benchmark)."""

    transactions: int = 0
    statements: int = 0


@dataclass(frozen=True, slots=True)
class AttemptCheck:
    """What a worker learns before it runs an attempt it received."""

    current: bool
    """The log scheduled this attempt and it is still outstanding."""
    saga_type: str
    item: Any
    input: dict[str, Any] | None
    """The saga's input when it is small (else None: load it with `SqlLog.input`)."""


class _Sql:
    """The statements of one dialect, as text built once."""

    def __init__(self, postgres: bool) -> None:
        self.postgres = postgres
        lock = " FOR NO KEY UPDATE" if postgres else ""
        self.lock = self._p(
            f"SELECT {', '.join(SAGA_COLUMNS)} FROM sagakit_sagas WHERE saga_id = :saga_id{lock}"
        )
        by_name = f"SELECT {_STEPS} FROM sagakit_steps WHERE saga_id = :saga_id AND name = :name"
        undo = (
            f"SELECT * FROM (SELECT {_STEPS} FROM sagakit_steps WHERE saga_id = :saga_id "
            "AND ord IS NOT NULL ORDER BY ord DESC LIMIT 1) AS top"
        )
        failed = (
            f"SELECT {_STEPS} FROM sagakit_steps WHERE saga_id = :saga_id "
            "AND status IN ('failed', 'compensation_failed')"
        )
        self.loads = {
            (named, top, fail): self._p(
                " UNION ALL ".join(
                    q for q, on in ((by_name, named), (undo, top), (failed, fail)) if on
                )
            )
            for named in (False, True)
            for top in (False, True)
            for fail in (False, True)
            if named or top or fail
        }
        head_set = ", ".join(f"{c} = :{c}" for c in HEAD_COLUMNS)
        self.save_head = self._p(
            f"UPDATE sagakit_sagas SET {head_set}, updated_at = :updated_at, "
            "finished_at = :finished_at WHERE saga_id = :saga_id"
        )
        insert_cols = ("saga_id", *STEP_COLUMNS, "output", *MESSAGE_COLUMNS)
        self.insert_step = self._insert("sagakit_steps", insert_cols)
        state_set = ", ".join(f"{c} = :{c}" for c in STEP_COLUMNS if c != "name")
        message_set = ", ".join(f"{c} = :{c}" for c in MESSAGE_COLUMNS)
        where = " WHERE saga_id = :saga_id AND name = :name"
        self.update_step = {
            (output, message): self._p(
                f"UPDATE sagakit_steps SET {state_set}"
                + (", output = :output" if output else "")
                + (f", {message_set}" if message else "")
                + where
            )
            for output in (False, True)
            for message in (False, True)
        }
        self.insert_history = self._insert("sagakit_transitions", HISTORY_COLUMNS)
        saga_cols = (
            *SAGA_COLUMNS,
            "input",
            "idempotency_key",
            "created_at",
            "updated_at",
            "finished_at",
            "deadline_at",
        )
        self.insert_saga = self._insert("sagakit_sagas", saga_cols)
        self.insert_saga_once = self._p(
            self._insert("sagakit_sagas", saga_cols, raw=True)
            + " ON CONFLICT (saga_type, idempotency_key) DO NOTHING RETURNING saga_id"
        )
        self.find_key = self._p(
            "SELECT saga_id FROM sagakit_sagas WHERE saga_type = :saga_type "
            "AND idempotency_key = :idempotency_key"
        )
        small = "pg_column_size(s.input)" if postgres else "length(s.input)"
        self.check = self._p(
            "SELECT st.status, st.attempt, st.comp_attempt, st.item, s.saga_type, "
            f"CASE WHEN {small} <= {INLINE_INPUT} THEN s.input END "
            "FROM sagakit_steps st JOIN sagakit_sagas s ON s.saga_id = st.saga_id "
            "WHERE st.saga_id = :saga_id AND st.name = :name"
        )
        self.input = self._p("SELECT input FROM sagakit_sagas WHERE saga_id = :saga_id")
        self.output = self._p(
            "SELECT output FROM sagakit_steps WHERE saga_id = :saga_id AND name = :name"
        )
        self.outputs = self._p(
            "SELECT name, output FROM sagakit_steps WHERE saga_id = :saga_id AND output IS NOT NULL"
        )
        self.unsend = self._p(
            "UPDATE sagakit_steps SET sent_at = NULL "
            "WHERE saga_id = :saga_id AND name = :name AND task_id = :task_id"
        )

    def _insert(self, table: str, columns: Sequence[str], *, raw: bool = False) -> str:
        text = (
            f"INSERT INTO {table} ({', '.join(columns)}) "
            f"VALUES ({', '.join(':' + c for c in columns)})"
        )
        return text if raw else self._p(text)

    def _p(self, text: str) -> str:
        """Named parameters in the driver's style: ``:name`` or ``%(name)s``."""
        return re.sub(r"(?<![:\w]):(\w+)", r"%(\1)s", text) if self.postgres else text


class SqlLog:
    """Transitions, starts and the reads a worker makes, on one saga log database."""

    def __init__(self, db: sa.Engine) -> None:
        self.db = db
        self.postgres = db.dialect.name == "postgresql"
        self.sql = _Sql(self.postgres)
        self.counts = Counts()
        if self.postgres:
            from psycopg.types.json import Jsonb

            self._jsonb = Jsonb

    # --- parameters ----------------------------------------------------------------

    def _json(self, value: Any) -> Any:
        if value is None:
            return None
        return self._jsonb(value) if self.postgres else json.dumps(value)

    def _time(self, value: datetime | None) -> Any:
        return value if value is None or self.postgres else _sqlite_time(value)

    def _params(self, values: Mapping[str, Any]) -> dict[str, Any]:
        out = dict(values)
        for key in _JSON_COLUMNS.intersection(out):
            out[key] = self._json(out[key])
        for key in _TIME_COLUMNS.intersection(out):
            out[key] = self._time(out[key])
        return out

    def _decode(self, value: Any) -> Any:
        return json.loads(value) if isinstance(value, str) and not self.postgres else value

    # --- connections ---------------------------------------------------------------

    @contextmanager
    def _connection(self) -> Iterator[Any]:
        pooled = self.db.raw_connection()
        try:
            yield pooled.driver_connection
        finally:
            pooled.close()

    def _run(self, conn: Any, statement: str, params: Mapping[str, Any]) -> Any:
        self.counts.statements += 1
        if self.postgres:
            return conn.execute(statement, params, prepare=True)
        return conn.execute(statement, params)

    def _run_many(self, conn: Any, statement: str, rows: Sequence[Mapping[str, Any]]) -> None:
        if not rows:
            return
        self.counts.statements += 1
        if self.postgres:
            conn.cursor().executemany(statement, rows)
        else:
            conn.executemany(statement, rows)

    @contextmanager
    def _transaction(self) -> Iterator[Any]:
        """One transaction (pipelined on PostgreSQL); commit on success, else roll back."""
        self.counts.transactions += 1
        with self._connection() as conn:
            if self.postgres:
                with conn.pipeline(), conn.transaction():
                    yield conn
                return
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    # --- writes --------------------------------------------------------------------

    def start(
        self,
        state: SagaState,
        input: Mapping[str, Any],
        decision: Decision,
        messages: Mapping[str, OutboxMessage],
        entries: Sequence[Entry],
        *,
        idempotency_key: str | None,
        deadline_at: datetime | None,
        now: datetime,
    ) -> str | None:
        """Insert a saga with its first transition; the existing saga's id for a used key."""
        head = decision.state
        values = self._params(
            {
                "saga_id": head.saga_id,
                "saga_type": head.saga_type,
                "definition_version": head.definition_version,
                **head_row(head),
                "input": dict(input),
                "idempotency_key": idempotency_key,
                "created_at": now,
                "updated_at": now,
                "finished_at": now if head.status.settled else None,
                "deadline_at": deadline_at,
            }
        )
        with self._transaction() as conn:
            if idempotency_key is None:
                self._run(conn, self.sql.insert_saga, values)
            else:
                inserted = self._run(conn, self.sql.insert_saga_once, values).fetchone()
                if inserted is None:
                    found = self._run(
                        conn,
                        self.sql.find_key,
                        {"saga_type": head.saga_type, "idempotency_key": idempotency_key},
                    ).fetchone()
                    return str(found[0])
            self._write_steps(conn, head.saga_id, decision, messages, None, now)
            self._run_many(conn, self.sql.insert_history, [self._params(e.row()) for e in entries])
        return None

    @contextmanager
    def transition(self, saga_id: str, needs: Needs) -> Iterator[Transition]:
        """Lock the saga and load what `needs` names. Raises SagaNotFound.

        The caller decides and calls `Transition.write`; leaving the block commits, an
        exception rolls everything back.
        """
        with self._transaction() as conn:
            head_cursor = self._run(conn, self.sql.lock, {"saga_id": saga_id})
            steps_cursor = None
            key = (bool(needs.names), needs.undo_top, needs.failed)
            if any(key):
                name = needs.names[0] if needs.names else None
                steps_cursor = self._run(
                    conn, self.sql.loads[key], {"saga_id": saga_id, "name": name}
                )
            row = head_cursor.fetchone()
            if row is None:
                raise SagaNotFound(saga_id)
            head = dict(zip(SAGA_COLUMNS, row, strict=True))
            head["sources"] = self._decode(head["sources"])
            loaded: dict[str, StepState] = {}
            for found in steps_cursor.fetchall() if steps_cursor is not None else ():
                values = dict(zip(STEP_COLUMNS, found, strict=True))
                values["item"] = self._decode(values["item"])
                loaded[values["name"]] = step_from(values)
            yield Transition(self, conn, head_from(head), loaded)

    def _write_steps(
        self,
        conn: Any,
        saga_id: str,
        decision: Decision,
        messages: Mapping[str, OutboxMessage],
        output: tuple[str, Any] | None,
        now: datetime,
    ) -> None:
        created = []
        for st in decision.created:
            created.append(
                self._params(
                    {
                        "saga_id": saga_id,
                        **step_row(st),
                        "output": None,
                        **_message_row(messages[st.name], now),
                    }
                )
            )
        self._run_many(conn, self.sql.insert_step, created)
        for st in decision.updated:
            values: dict[str, Any] = {"saga_id": saga_id, **step_row(st)}
            with_output = output is not None and output[0] == st.name
            if with_output:
                assert output is not None
                values["output"] = output[1]
            message = messages.get(st.name)
            if message is not None:
                values.update(_message_row(message, now))
            statement = self.sql.update_step[(with_output, message is not None)]
            self._run(conn, statement, self._params(values))

    # --- worker reads --------------------------------------------------------------

    def check(self, saga_id: str, name: str, direction: str, attempt: int) -> AttemptCheck | None:
        """Whether the log scheduled this attempt; None when it knows no such instance."""
        with self._connection() as conn:
            row = self._run(conn, self.sql.check, {"saga_id": saga_id, "name": name}).fetchone()
        if row is None:
            return None
        status, action_attempt, comp_attempt, item, saga_type, small_input = row
        if direction == "action":
            current = status == "running" and action_attempt == attempt
        else:
            current = status == "compensating" and comp_attempt == attempt
        data = self._decode(small_input)
        return AttemptCheck(current, saga_type, self._decode(item), data)

    def input(self, saga_id: str) -> dict[str, Any]:
        """The saga's input. Raises SagaNotFound."""
        with self._connection() as conn:
            row = self._run(conn, self.sql.input, {"saga_id": saga_id}).fetchone()
        if row is None:
            raise SagaNotFound(saga_id)
        return dict(self._decode(row[0]) or {})

    def output(self, saga_id: str, name: str) -> tuple[bool, Any]:
        """(found, output) of one step instance."""
        with self._connection() as conn:
            row = self._run(conn, self.sql.output, {"saga_id": saga_id, "name": name}).fetchone()
        return (False, None) if row is None else (True, self._decode(row[0]))

    def outputs(self, saga_id: str) -> dict[str, Any]:
        """Every stored output of the saga, by instance name."""
        with self._connection() as conn:
            rows = self._run(conn, self.sql.outputs, {"saga_id": saga_id}).fetchall()
        return {name: self._decode(value) for name, value in rows}

    def unsend(self, messages: Sequence[OutboxMessage]) -> None:
        """Mark messages that could not be sent, so the sweeper sends them when it can."""
        with self._connection() as conn:
            for m in messages:
                self._run(
                    conn,
                    self.sql.unsend,
                    {"saga_id": m.saga_id, "name": m.kwargs["step"], "task_id": m.task_id},
                )


@dataclass
class Transition:
    """One open transition: the locked head and the loaded step instances."""

    log: SqlLog
    conn: Any
    state: SagaState
    steps: dict[str, StepState] = field(default_factory=dict)

    def write(
        self,
        decision: Decision,
        messages: Mapping[str, OutboxMessage],
        entries: Sequence[Entry],
        *,
        now: datetime,
        output: tuple[str, Any] | None = None,
    ) -> None:
        """Write what the decision changed; `output` is (instance, value) of a success."""
        log, head = self.log, decision.state
        values = {
            "saga_id": head.saga_id,
            **head_row(head),
            "updated_at": now,
            "finished_at": now if head.status.settled else None,
        }
        log._run(self.conn, log.sql.save_head, log._params(values))
        log._write_steps(self.conn, head.saga_id, decision, messages, output, now)
        log._run_many(self.conn, log.sql.insert_history, [log._params(e.row()) for e in entries])


def _message_row(message: OutboxMessage, now: datetime) -> dict[str, Any]:
    due = message.not_before <= now
    return {
        "task_id": message.task_id,
        "task_name": message.task_name,
        "queue": message.queue,
        "not_before": message.not_before,
        "sent_at": now if due else None,
        "send_count": 1 if due else 0,
    }


def _sqlite_time(value: datetime) -> str:
    """A UTC datetime as SQLAlchemy stores it on SQLite."""
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
