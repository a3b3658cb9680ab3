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
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
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
    """Transactions and statements this process ran through the hot path."""

    transactions: int = 0
    statements: int = 0
    observers: list[Callable[[str, int], None]] = field(default_factory=list)
    """Told of each count (`sagakit bench` tallies them across processes)."""

    def add(self, key: str, n: int = 1) -> None:
        if key == "sql_statements":
            self.statements += n
        else:
            self.transactions += n
        for observer in self.observers:
            observer(key, n)


COUNTS = Counts()
"""This process's counts (every SqlLog adds to them)."""


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
        self.raw_head = (
            f"UPDATE sagakit_sagas SET {head_set}, updated_at = :updated_at, "
            "finished_at = :finished_at WHERE saga_id = :saga_id"
        )
        self.step_columns = ("saga_id", *STEP_COLUMNS, "output", *MESSAGE_COLUMNS)
        state_set = ", ".join(f"{c} = :{c}" for c in STEP_COLUMNS if c != "name")
        message_set = ", ".join(f"{c} = :{c}" for c in MESSAGE_COLUMNS)
        where = " WHERE saga_id = :saga_id AND name = :name"
        self.raw_update = {
            (output, message): (
                f"UPDATE sagakit_steps SET {state_set}"
                + (", output = :output" if output else "")
                + (f", {message_set}" if message else "")
                + where
            )
            for output in (False, True)
            for message in (False, True)
        }
        self._composed: dict[tuple[Any, ...], str] = {}
        # PostgreSQL: each write takes its rows as one JSON parameter (jsonb_populate_record),
        # so a transition's writes make one short statement with a handful of parameters,
        # which psycopg converts once and the server plans once.
        head_cols = (*HEAD_COLUMNS, "updated_at", "finished_at")
        self.doc_head = _set_from_doc("sagakit_sagas", head_cols, ("saga_id",), many=False)
        update_cols = [c for c in STEP_COLUMNS if c != "name"]
        self.doc_update = {
            (output, message): _set_from_doc(
                "sagakit_steps",
                (
                    *update_cols,
                    *(["output"] if output else []),
                    *(MESSAGE_COLUMNS if message else ()),
                ),
                ("saga_id", "name"),
                many=True,
            )
            for output in (False, True)
            for message in (False, True)
        }
        saga_cols = (
            *SAGA_COLUMNS,
            "input",
            "idempotency_key",
            "created_at",
            "updated_at",
            "finished_at",
            "deadline_at",
        )
        self.raw_insert_saga = self._insert("sagakit_sagas", saga_cols, raw=True)
        self.doc_saga = self.doc_rows("sagakit_sagas", saga_cols, many=False)
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

    @staticmethod
    def doc_rows(table: str, columns: Sequence[str], *, many: bool = True) -> str:
        """INSERT of the rows in one JSON parameter ``:doc`` (PostgreSQL)."""
        listed = ", ".join(columns)
        source = "jsonb_populate_recordset" if many else "jsonb_populate_record"
        return f"INSERT INTO {table} ({listed}) SELECT {listed} FROM {source}(NULL::{table}, :doc)"

    def raw_rows(self, table: str, columns: Sequence[str], n: int) -> str:
        """One INSERT of `n` rows, its parameters named ``<column>_<row>``."""
        rows = ", ".join("(" + ", ".join(f":{c}_{i}" for c in columns) + ")" for i in range(n))
        return f"INSERT INTO {table} ({', '.join(columns)}) VALUES {rows}"

    def composed(self, parts: Sequence[_Part]) -> str:
        """The parts as one statement: the first part is the main statement, the others
        data-modifying CTEs (run in the same snapshot; foreign keys checked at its end).

        Each part's parameters are prefixed ``p<i>_``; the text is built once per shape.
        """
        key = tuple(p.key for p in parts)
        text = self._composed.get(key)
        if text is None:
            texts = [_prefixed(p.text, f"p{i}") for i, p in enumerate(parts)]
            ctes = ", ".join(f"w{i} AS ({t})" for i, t in enumerate(texts[1:], start=1))
            text = self._p(f"WITH {ctes} {texts[0]}" if ctes else texts[0])
            if len(self._composed) < 512:
                self._composed[key] = text
        return text

    def _insert(self, table: str, columns: Sequence[str], *, raw: bool = False) -> str:
        text = (
            f"INSERT INTO {table} ({', '.join(columns)}) "
            f"VALUES ({', '.join(':' + c for c in columns)})"
        )
        return text if raw else self._p(text)

    def _p(self, text: str) -> str:
        """Named parameters in the driver's style: ``:name`` or ``%(name)s``."""
        return re.sub(r"(?<![:\w]):(\w+)", r"%(\1)s", text) if self.postgres else text


@dataclass(frozen=True, slots=True)
class _Part:
    """One write of a transition: its statement's shape, its raw SQL and its parameters."""

    key: tuple[Any, ...]
    text: str
    params: dict[str, Any]


def _set_from_doc(table: str, columns: Sequence[str], keys: Sequence[str], *, many: bool) -> str:
    """UPDATE of `columns` from the rows in one JSON parameter ``:doc`` (PostgreSQL)."""
    source = "jsonb_populate_recordset" if many else "jsonb_populate_record"
    targets = ", ".join(columns)
    values = ", ".join(f"v.{c}" for c in columns)
    match = " AND ".join(f"t.{k} = v.{k}" for k in keys)
    return (
        f"UPDATE {table} AS t SET ({targets}) = ({values}) "
        f"FROM {source}(NULL::{table}, :doc) AS v WHERE {match}"
    )


def _prefixed(text: str, prefix: str) -> str:
    return re.sub(r"(?<![:\w]):(\w+)", rf":{prefix}_\1", text)


class SqlLog:
    """Transitions, starts and the reads a worker makes, on one saga log database."""

    def __init__(self, db: sa.Engine) -> None:
        self.db = db
        self.postgres = db.dialect.name == "postgresql"
        self.sql = _Sql(self.postgres)
        self.counts = COUNTS
        if self.postgres:
            from psycopg.types.json import Jsonb

            self._Jsonb = Jsonb

    # --- parameters ----------------------------------------------------------------

    def _json(self, value: Any) -> Any:
        if value is None:
            return None
        return self._jsonb(value) if self.postgres else json.dumps(value)

    def _jsonb(self, value: Any) -> Any:
        return self._Jsonb(value)

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
        self.counts.add("sql_statements")
        if self.postgres:
            return conn.execute(statement, params, prepare=True)
        return conn.execute(statement, params)

    def _rows(
        self, table: str, columns: Sequence[str], rows: Sequence[Mapping[str, Any]]
    ) -> list[_Part]:
        """INSERTs of `rows`: one with a JSON parameter on PostgreSQL; on SQLite one per
        batch under its limit on parameters (32766)."""
        if not rows:
            return []
        if self.postgres:
            doc = self._jsonb([_document(r, columns) for r in rows])
            return [_Part(("rows", table), self.sql.doc_rows(table, columns), {"doc": doc})]
        batch = max(1, 30_000 // len(columns))
        parts = []
        for start in range(0, len(rows), batch):
            chunk = [self._params(r) for r in rows[start : start + batch]]
            params = {f"{c}_{i}": row[c] for i, row in enumerate(chunk) for c in columns}
            text = self.sql.raw_rows(table, columns, len(chunk))
            parts.append(_Part(("rows", table, len(chunk)), text, params))
        return parts

    def _one(self, key: str, doc_text: str, raw_text: str, values: Mapping[str, Any]) -> _Part:
        """One row's write: a JSON parameter on PostgreSQL, one per column on SQLite."""
        if self.postgres:
            return _Part((key,), doc_text, {"doc": self._jsonb(_document(values, values))})
        return _Part((key,), raw_text, self._params(values))

    def _execute(self, conn: Any, parts: Sequence[_Part]) -> None:
        """Run a transition's writes: one statement on PostgreSQL, each on its own on SQLite."""
        if not parts:
            return
        if self.postgres:
            params = {f"p{i}_{k}": v for i, p in enumerate(parts) for k, v in p.params.items()}
            self.counts.add("sql_statements")
            conn.execute(self.sql.composed(parts), params, prepare=True)
            return
        for part in parts:
            self.counts.add("sql_statements")
            conn.execute(part.text, part.params)

    @contextmanager
    def _transaction(self) -> Iterator[Any]:
        """One transaction (pipelined on PostgreSQL); commit on success, else roll back."""
        self.counts.add("sql_transactions")
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
        raw_values = {
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
        values = self._params(raw_values)
        with self._transaction() as conn:
            parts = self._step_parts(head.saga_id, decision, messages, None, now)
            parts += self._history_parts(entries)
            if idempotency_key is None:
                saga = self._one("saga", self.sql.doc_saga, self.sql.raw_insert_saga, raw_values)
                self._execute(conn, [saga, *parts])
            else:
                inserted = self._run(conn, self.sql.insert_saga_once, values).fetchone()
                if inserted is None:
                    found = self._run(
                        conn,
                        self.sql.find_key,
                        {"saga_type": head.saga_type, "idempotency_key": idempotency_key},
                    ).fetchone()
                    return str(found[0])
                self._execute(conn, parts)
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

    def _step_parts(
        self,
        saga_id: str,
        decision: Decision,
        messages: Mapping[str, OutboxMessage],
        output: tuple[str, Any] | None,
        now: datetime,
    ) -> list[_Part]:
        created = [
            {
                "saga_id": saga_id,
                **step_row(st),
                "output": None,
                **_message_row(messages[st.name], now),
            }
            for st in decision.created
        ]
        parts = self._rows("sagakit_steps", self.sql.step_columns, created)
        by_variant: dict[tuple[bool, bool], list[dict[str, Any]]] = {}
        for st in decision.updated:
            values: dict[str, Any] = {"saga_id": saga_id, **step_row(st)}
            with_output = output is not None and output[0] == st.name
            if with_output:
                assert output is not None
                values["output"] = output[1]
            message = messages.get(st.name)
            if message is not None:
                values.update(_message_row(message, now))
            by_variant.setdefault((with_output, message is not None), []).append(values)
        for variant, rows in by_variant.items():
            if self.postgres:
                doc = self._jsonb([_document(r, r) for r in rows])
                parts.append(
                    _Part(("update", *variant), self.sql.doc_update[variant], {"doc": doc})
                )
            else:
                parts.extend(
                    _Part(("update", *variant), self.sql.raw_update[variant], self._params(r))
                    for r in rows
                )
        return parts

    def _history_parts(self, entries: Sequence[Entry]) -> list[_Part]:
        return self._rows("sagakit_transitions", HISTORY_COLUMNS, [e.row() for e in entries])

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
        parts = [log._one("head", log.sql.doc_head, log.sql.raw_head, values)]
        parts += log._step_parts(head.saga_id, decision, messages, output, now)
        parts += log._history_parts(entries)
        log._execute(self.conn, parts)


def _document(values: Mapping[str, Any], columns: Iterable[str]) -> dict[str, Any]:
    """A row as JSON for jsonb_populate_record: datetimes as ISO 8601, JSON columns as is."""
    return {
        c: values[c].isoformat() if isinstance(values.get(c), datetime) else values.get(c)
        for c in columns
    }


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
