"""The saga log's hot path: a transition is one write statement, prepared once.

An attempt's outcome is decided on a `Snapshot` of the saga: the head with its version, the
attempt's step row and the next instance to undo. The message that started the attempt
usually carries it (sealed, `messages.STATE_HEADER`); otherwise the worker reads it in one
statement before running the step (`SqlLog.check`), which also tells whether the attempt is
still current. The outcome is then written as one statement that changes the head only if
its version is still the snapshot's, and every other row only if the head changed
(`Transition.write`): no lock is held while the step runs, and on PostgreSQL the write
commits on its own, with no BEGIN or COMMIT to send. If anything else changed the saga
meanwhile (a parallel branch finishing, a cancel, the sweeper), the write changes nothing
and the engine applies the outcome under the saga's row lock instead
(`SqlLog.transition`: ``SELECT ... FOR NO KEY UPDATE`` on PostgreSQL, ``BEGIN IMMEDIATE``
on SQLite), from a fresh read.

These statements run on the raw DB-API connections of a SQLAlchemy pool rather than
through SQLAlchemy's expression layer: measured on this path, building and executing Core
constructs cost 2.1 ms of client CPU per transition, the same SQL as prepared psycopg
statements 0.6 ms (docs/architecture.md, "Costs"). psycopg's pipeline mode is not used:
for a transaction of a few statements it cost more CPU on both sides than plain round
trips (0.41 ms against 0.24 ms in the client, 0.33 ms against 0.26 ms in the server).
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from ..core.codec import (
    HEAD_COLUMNS,
    HISTORY_COLUMNS,
    MESSAGE_COLUMNS,
    STEP_COLUMNS,
    head_from,
    head_row,
    step_from,
    step_row,
)
from ..core.errors import SagaNotFound
from ..core.events import Decision, Needs
from ..core.state import SagaState, StepState, StepStatus
from ..journal import Entry
from ..messages import OutboxMessage

SAGA_COLUMNS = ("saga_id", "saga_type", "definition_version", *HEAD_COLUMNS)
READ_COLUMNS = (*SAGA_COLUMNS, "version")
"""The saga row as a transition reads it: the head and its version."""
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
class Snapshot:
    """A saga as one read saw it: the head, its version and the instances read with it
    (an attempt's own instance and the next to undo)."""

    state: SagaState
    version: int
    steps: Mapping[str, StepState]

    def covers(self, needs: Needs) -> bool:
        """True when `decide` needs nothing for the event beyond what was read."""
        return not needs.failed and all(name in self.steps for name in needs.names)

    def encode(self) -> str:
        """As the JSON of a message header (`messages.STATE_HEADER`): the head's and the
        instances' columns as positional lists, the order of `core.codec`'s columns."""
        state = self.state
        head = [state.saga_id, state.saga_type, state.definition_version]
        head += head_row(state).values()
        rows = [list(step_row(st).values()) for st in self.steps.values()]
        return json.dumps([self.version, head, rows], separators=(",", ":"))

    @classmethod
    def carried(
        cls, text: Any, saga_id: str, name: str, direction: str, attempt: int
    ) -> Snapshot | None:
        """A message's state header, if it holds this very attempt as outstanding."""
        snapshot = cls.decode(text)
        if snapshot is None or snapshot.state.saga_id != saga_id:
            return None
        st = snapshot.steps.get(name)
        if st is None:
            return None
        if direction == "compensation":
            outstanding = (st.status, st.compensation_attempt) == (StepStatus.COMPENSATING, attempt)
        else:
            outstanding = (st.status, st.attempt) == (StepStatus.RUNNING, attempt)
        return snapshot if outstanding else None

    @classmethod
    def decode(cls, text: Any) -> Snapshot | None:
        """From `encode`'s JSON; None for anything else (the worker reads the saga then)."""
        try:
            version, head, rows = json.loads(text)
            state = head_from(dict(zip(SAGA_COLUMNS, head, strict=True)))
            steps = [step_from(dict(zip(STEP_COLUMNS, row, strict=True))) for row in rows]
            return cls(state, int(version), {st.name: st for st in steps})
        except (TypeError, ValueError, KeyError):
            return None


def _stored_key(db: sa.Engine, name: str) -> bytes:
    """The secret `name` of `sagakit_keys`, made now if there is none (the first writer
    wins when several processes start at once)."""
    from . import schema

    keys = schema.keys
    made = {"name": name, "secret": secrets.token_hex(32), "created_at": datetime.now(UTC)}
    from sqlalchemy.dialects import postgresql, sqlite

    dialect: Any = postgresql if db.dialect.name == "postgresql" else sqlite
    with db.begin() as conn:
        conn.execute(dialect.insert(keys).values(made).on_conflict_do_nothing())
        secret = conn.execute(sa.select(keys.c.secret).where(keys.c.name == name)).scalar_one()
    return bytes.fromhex(secret)


@dataclass(frozen=True, slots=True)
class AttemptCheck:
    """What a worker learns before it runs an attempt it received."""

    current: bool
    """The log scheduled this attempt and it is still outstanding."""
    saga_type: str
    item: Any
    input: dict[str, Any] | None
    """The saga's input when it is small (else None: load it with `SqlLog.input`)."""
    snapshot: Snapshot
    """The saga as read: the engine applies the attempt's outcome to it, if it still holds."""


class _Sql:
    """The statements of one dialect, as text built once."""

    def __init__(self, postgres: bool) -> None:
        self.postgres = postgres
        small = "pg_column_size(s.input)" if postgres else "length(s.input)"
        heads = ", ".join(f"s.{c}" for c in READ_COLUMNS)
        mine = ", ".join(f"st.{c}" for c in STEP_COLUMNS)
        tops = ", ".join(f"top.{c}" for c in STEP_COLUMNS)
        self.read = {
            (lock, with_input): self._p(
                f"SELECT {heads}, "
                + (f"CASE WHEN {small} <= {INLINE_INPUT} THEN s.input END, " if with_input else "")
                + f"{mine}, {tops} FROM sagakit_sagas s "
                "LEFT JOIN sagakit_steps st ON st.saga_id = s.saga_id AND st.name = :name "
                f"LEFT JOIN (SELECT {_STEPS} FROM sagakit_steps WHERE saga_id = :saga_id "
                "AND ord IS NOT NULL ORDER BY ord DESC LIMIT 1) top ON 1 = 1 "
                "WHERE s.saga_id = :saga_id"
                + (" FOR NO KEY UPDATE OF s" if lock and postgres else "")
            )
            for lock in (False, True)
            for with_input in (False, True)
        }
        self.failed = self._p(
            f"SELECT {_STEPS} FROM sagakit_steps WHERE saga_id = :saga_id "
            "AND status IN ('failed', 'compensation_failed')"
        )
        head_set = ", ".join(f"{c} = :{c}" for c in HEAD_COLUMNS)
        self.raw_head = (
            f"UPDATE sagakit_sagas SET {head_set}, updated_at = :updated_at, "
            "finished_at = :finished_at, version = version + 1 "
            "WHERE saga_id = :saga_id AND version = :expected"
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
        self._inserts: dict[tuple[str, bool], str] = {}
        # PostgreSQL: each write takes its rows as one JSON parameter (jsonb_populate_record),
        # so a transition's writes make one short statement with a handful of parameters,
        # which psycopg converts once and the server plans once.
        # The head's write comes first, as the CTE `ok`: it changes the row only at the
        # version read, and every other write joins `ok`, so all or none take effect.
        written = (*HEAD_COLUMNS, "updated_at", "finished_at")
        head_cols = ", ".join(written)
        head_values = ", ".join(f"v.{c}" for c in written)
        self.doc_head = (
            f"UPDATE sagakit_sagas AS t SET ({head_cols}, version) = "
            f"({head_values}, t.version + 1) "
            "FROM jsonb_populate_record(NULL::sagakit_sagas, :doc) AS v "
            "WHERE t.saga_id = :saga_id AND t.version = :expected RETURNING 1 AS applied"
        )
        update_cols = [c for c in STEP_COLUMNS if c != "name"]
        self.doc_update = {
            (output, message, one): _set_from_doc(
                "sagakit_steps",
                (
                    *update_cols,
                    *(["output"] if output else []),
                    *(MESSAGE_COLUMNS if message else ()),
                ),
                one=one,
            )
            for output in (False, True)
            for message in (False, True)
            for one in (False, True)
        }
        saga_cols = (
            *SAGA_COLUMNS,
            "version",
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
        self.input = self._p("SELECT input FROM sagakit_sagas WHERE saga_id = :saga_id")
        self.output = self._p(
            "SELECT output FROM sagakit_steps WHERE saga_id = :saga_id AND name = :name"
        )
        self.outputs = self._p(
            "SELECT name, output FROM sagakit_steps WHERE saga_id = :saga_id AND output IS NOT NULL"
        )
        # The next instance to undo among those a transition does not write (it knows
        # those), as the saga stood before the transition: with the instances it writes,
        # that tells which is next to undo once it is written.
        self.next_undo = (
            f"SELECT {_STEPS} FROM sagakit_steps WHERE saga_id = :saga_id "
            "AND ord IS NOT NULL AND {unwritten} ORDER BY ord DESC LIMIT 1"
        )
        self.unsend = self._p(
            "UPDATE sagakit_steps SET sent_at = NULL "
            "WHERE saga_id = :saga_id AND name = :name AND task_id = :task_id"
        )

    @staticmethod
    def doc_rows(
        table: str, columns: Sequence[str], *, many: bool = True, guarded: bool = False
    ) -> str:
        """INSERT of the rows in one JSON parameter ``:doc`` (PostgreSQL); `guarded`: only
        if the head's write (the CTE ``ok``) took effect."""
        listed = ", ".join(columns)
        values = ", ".join(f"v.{c}" for c in columns)
        source = "jsonb_populate_recordset" if many else "jsonb_populate_record"
        return (
            f"INSERT INTO {table} ({listed}) SELECT {values} "
            f"FROM {source}(NULL::{table}, :doc) AS v" + (", ok" if guarded else "")
        )

    def insert(self, table: str, columns: Sequence[str], *, guarded: bool) -> str:
        """`doc_rows` of a table, built once (each table is written with one column list)."""
        text = self._inserts.get((table, guarded))
        if text is None:
            text = self._inserts[table, guarded] = self.doc_rows(table, columns, guarded=guarded)
        return text

    def raw_rows(self, table: str, columns: Sequence[str], n: int) -> str:
        """One INSERT of `n` rows, its parameters named ``<column>_<row>``."""
        rows = ", ".join("(" + ", ".join(f":{c}_{i}" for c in columns) + ")" for i in range(n))
        return f"INSERT INTO {table} ({', '.join(columns)}) VALUES {rows}"

    def unwritten(self, n: int) -> str:
        """The condition of `next_undo` leaving out `n` instances (``:w0``, ``:w1``...)."""
        if n == 0:
            return "1 = 1"
        return "name NOT IN (" + ", ".join(f":w{i}" for i in range(n)) + ")"

    def composed(self, parts: Sequence[_Part], *, guarded: bool, undo: int | None = None) -> str:
        """The parts as one statement of data-modifying CTEs (run in one snapshot; foreign
        keys checked at its end).

        `guarded`: the first part is the head's write, named ``ok``, the others join it,
        and the statement returns how many head rows it changed (0 or 1); with `undo`, the
        number of instances written, also the next to undo among the others (`next_undo`,
        its parameters prefixed ``u_``), read before the writes. Otherwise the first part
        is the main statement. Each part's parameters are prefixed ``p<i>_``; the text is
        built once per shape.
        """
        key = (guarded, undo, *(p.key for p in parts))
        text = self._composed.get(key)
        if text is None:
            texts = [_prefixed(p.text, f"p{i}") for i, p in enumerate(parts)]
            if guarded:
                ctes = [f"ok AS ({texts[0]})"]
                ctes += [f"w{i} AS ({t})" for i, t in enumerate(texts[1:], start=1)]
                main = "SELECT count(*) FROM ok"
                if undo is not None:
                    # Data-modifying CTEs and the main query share one snapshot: this
                    # reads the rows as they were before the writes.
                    nxt = self.next_undo.format(unwritten=self.unwritten(undo))
                    main = (
                        f"SELECT (SELECT count(*) FROM ok), nu.* FROM (SELECT 1) AS one "
                        f"LEFT JOIN ({_prefixed(nxt, 'u')}) AS nu ON 1 = 1"
                    )
                text = self._p(f"WITH {', '.join(ctes)} {main}")
            else:
                ctes = [f"w{i} AS ({t})" for i, t in enumerate(texts[1:], start=1)]
                text = self._p(f"WITH {', '.join(ctes)} {texts[0]}" if ctes else texts[0])
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


def _set_from_doc(table: str, columns: Sequence[str], *, one: bool = False) -> str:
    """UPDATE of `columns` of one saga's rows from the rows in one JSON parameter ``:doc``
    (PostgreSQL), if the head's write (the CTE ``ok``) took effect.

    The rows are matched by ``saga_id = :saga_id``, a parameter, so the plan is an index
    scan of that saga's rows whatever the planner guesses of the JSON's length. `one`: the
    document is one row whose name is ``:name`` too, so the plan is one primary-key lookup
    (a transition that changes one instance costs the same however many the saga has).
    """
    targets = ", ".join(columns)
    values = ", ".join(f"v.{c}" for c in columns)
    source = "jsonb_populate_record" if one else "jsonb_populate_recordset"
    match = "t.name = :name" if one else "t.name = v.name"
    return (
        f"UPDATE {table} AS t SET ({targets}) = ({values}) "
        f"FROM {source}(NULL::{table}, :doc) AS v, ok "
        f"WHERE t.saga_id = :saga_id AND {match}"
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
        self._key: bytes | None = None
        if self.postgres:
            from psycopg.types.json import Jsonb

            self._Jsonb = Jsonb

    def state_key(self) -> bytes:
        """The key that seals the state step messages carry (`messages.seal`): made on
        first use, kept in the log, read once per process."""
        if self._key is None:
            self._key = _stored_key(self.db, "state")
        return self._key

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
        except Exception as exc:
            # A connection the server cut (a restart, a crash) never goes back to the pool,
            # as SQLAlchemy does with the connections it runs statements on.
            if getattr(pooled.driver_connection, "closed", False):
                pooled.invalidate(exc)
            raise
        finally:
            pooled.close()

    def _run(self, conn: Any, statement: str, params: Mapping[str, Any]) -> Any:
        self.counts.add("sql_statements")
        if self.postgres:
            return conn.execute(statement, params, prepare=True)
        return conn.execute(statement, params)

    def _rows(
        self,
        table: str,
        columns: Sequence[str],
        rows: Sequence[Mapping[str, Any]],
        *,
        guarded: bool = True,
    ) -> list[_Part]:
        """INSERTs of `rows`: one with a JSON parameter on PostgreSQL; on SQLite one per
        batch under its limit on parameters (32766)."""
        if not rows:
            return []
        if self.postgres:
            doc = self._jsonb([_document(r, columns) for r in rows])
            text = self.sql.insert(table, columns, guarded=guarded)
            return [_Part(("rows", table, guarded), text, {"doc": doc})]
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

    def _execute(
        self,
        conn: Any,
        parts: Sequence[_Part],
        *,
        guarded: bool = False,
        undo: _Undo | None = None,
    ) -> bool:
        """Run a transition's writes: one statement on PostgreSQL, each on its own on SQLite.

        `guarded`: the first part is the head's write, at the version read; if it changes
        no row, nothing else is written and the result is False. `undo` (guarded only):
        also read the next instance to undo among those not written, into `undo.found`.
        """
        if not parts:
            return True
        if self.postgres:
            params = {f"p{i}_{k}": v for i, p in enumerate(parts) for k, v in p.params.items()}
            n = None
            if undo is not None:
                n = len(undo.written)
                params["u_saga_id"] = undo.saga_id
                params.update({f"u_w{i}": name for i, name in enumerate(undo.written)})
            self.counts.add("sql_statements")
            text = self.sql.composed(parts, guarded=guarded, undo=n)
            cursor = conn.execute(text, params, prepare=True)
            if guarded:
                row = cursor.fetchone()
                if undo is not None and row is not None and row[1] is not None:
                    undo.found = self._step(row[1:])
                return bool(row and row[0])
            return True
        for n, part in enumerate(parts):
            self.counts.add("sql_statements")
            cursor = conn.execute(part.text, part.params)
            if guarded and n == 0 and cursor.rowcount != 1:
                return False
            if undo is not None and n == 0:
                # The rows as they were before the writes, in the same transaction.
                text = self.sql.next_undo.format(unwritten=self.sql.unwritten(len(undo.written)))
                params = {"saga_id": undo.saga_id}
                params.update({f"w{i}": name for i, name in enumerate(undo.written)})
                self.counts.add("sql_statements")
                found = conn.execute(text, params).fetchone()
                undo.found = None if found is None else self._step(found)
        return True

    def _step(self, values: Sequence[Any]) -> StepState:
        found = dict(zip(STEP_COLUMNS, values, strict=True))
        found["item"] = self._decode(found["item"])
        return step_from(found)

    @contextmanager
    def _transaction(self, conn: Any) -> Iterator[Any]:
        """One transaction on `conn`: commit on success, else roll back."""
        self.counts.add("sql_transactions")
        if self.postgres:
            with conn.transaction():
                yield conn
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def _read(
        self, conn: Any, saga_id: str, name: str | None, *, lock: bool, with_input: bool
    ) -> tuple[Snapshot, Any] | None:
        """The saga's head and version, instance `name` and the next to undo, in one row;
        (snapshot, the input if asked and small); None for an unknown saga."""
        row = self._run(
            conn, self.sql.read[lock, with_input], {"saga_id": saga_id, "name": name}
        ).fetchone()
        if row is None:
            return None
        n = len(READ_COLUMNS)
        head = dict(zip(READ_COLUMNS, row[:n], strict=True))
        head["sources"] = self._decode(head["sources"])
        small_input = self._decode(row[n]) if with_input else None
        rest = row[n + 1 :] if with_input else row[n:]
        k = len(STEP_COLUMNS)
        steps: dict[str, StepState] = {}
        for values in (rest[:k], rest[k:]):
            if values[0] is not None:
                st = self._step(values)
                steps[st.name] = st
        return Snapshot(head_from(head), int(head["version"]), steps), small_input

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
            "version": 0,
            "input": dict(input),
            "idempotency_key": idempotency_key,
            "created_at": now,
            "updated_at": now,
            "finished_at": now if head.status.settled else None,
            "deadline_at": deadline_at,
        }
        parts = self._step_parts(head.saga_id, decision, messages, None, now, guarded=False)
        parts += self._history_parts(entries, guarded=False)
        with self._connection() as conn:
            if idempotency_key is None:
                saga = self._one("saga", self.sql.doc_saga, self.sql.raw_insert_saga, raw_values)
                if self.postgres:  # one statement: it commits on its own
                    self.counts.add("sql_transactions")
                    self._execute(conn, [saga, *parts])
                    return None
                with self._transaction(conn):
                    self._execute(conn, [saga, *parts])
                return None
            with self._transaction(conn):
                values = self._params(raw_values)
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
        with self._connection() as conn, self._transaction(conn):
            name = needs.names[0] if needs.names else None
            read = self._read(conn, saga_id, name, lock=True, with_input=False)
            if read is None:
                raise SagaNotFound(saga_id)
            snapshot = read[0]
            steps = dict(snapshot.steps)
            if needs.failed:
                for found in self._run(conn, self.sql.failed, {"saga_id": saga_id}).fetchall():
                    st = self._step(found)
                    steps[st.name] = st
            yield Transition(self, conn, snapshot.state, snapshot.version, steps)

    def on(self, snapshot: Snapshot) -> Transition:
        """A transition from a snapshot, without the lock: its write takes effect only if
        nothing changed the saga since the snapshot was read."""
        return Transition(self, None, snapshot.state, snapshot.version, dict(snapshot.steps))

    def _step_parts(
        self,
        saga_id: str,
        decision: Decision,
        messages: Mapping[str, OutboxMessage],
        output: tuple[str, Any] | None,
        now: datetime,
        *,
        guarded: bool = True,
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
        parts = self._rows("sagakit_steps", self.sql.step_columns, created, guarded=guarded)
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
                one = len(rows) == 1
                params = {"saga_id": saga_id}
                if one:
                    [row] = rows
                    params.update(doc=self._jsonb(_document(row, row)), name=row["name"])
                else:
                    params["doc"] = self._jsonb([_document(r, r) for r in rows])
                shape = (*variant, one)
                parts.append(_Part(("update", *shape), self.sql.doc_update[shape], params))
            else:
                parts.extend(
                    _Part(("update", *variant), self.sql.raw_update[variant], self._params(r))
                    for r in rows
                )
        return parts

    def _history_parts(self, entries: Sequence[Entry], *, guarded: bool = True) -> list[_Part]:
        rows = [e.row() for e in entries]
        return self._rows("sagakit_transitions", HISTORY_COLUMNS, rows, guarded=guarded)

    # --- worker reads --------------------------------------------------------------

    def check(self, saga_id: str, name: str, direction: str, attempt: int) -> AttemptCheck | None:
        """Whether the log scheduled this attempt, with the saga as read; None when it
        knows no such instance."""
        with self._connection() as conn:
            read = self._read(conn, saga_id, name, lock=False, with_input=True)
        if read is None or name not in read[0].steps:
            return None
        snapshot, small_input = read
        st = snapshot.steps[name]
        if direction == "action":
            current = st.status is StepStatus.RUNNING and st.attempt == attempt
        else:
            current = st.status is StepStatus.COMPENSATING and st.compensation_attempt == attempt
        return AttemptCheck(current, snapshot.state.saga_type, st.item, small_input, snapshot)

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
    """One transition: the head as read, its version, and the instances read with it.

    Under the row lock (`SqlLog.transition`) its write always takes effect; from a
    snapshot (`SqlLog.on`) only if the head is still at `version`.
    """

    log: SqlLog
    conn: Any
    """The locked transaction's connection; None for a transition from a snapshot."""
    state: SagaState
    version: int
    steps: dict[str, StepState] = field(default_factory=dict)
    unwritten_top: StepState | None = None
    """After a write that asked for it (`next_undo`): the waiting instance of greatest
    order among those the write left alone, as they were (None: there is none)."""

    def write(
        self,
        decision: Decision,
        messages: Mapping[str, OutboxMessage],
        entries: Sequence[Entry],
        *,
        now: datetime,
        output: tuple[str, Any] | None = None,
        next_undo: bool = False,
    ) -> bool:
        """Write what the decision changed; `output` is (instance, value) of a success.

        False when the saga changed since it was read (nothing is written then).
        `next_undo`: also read, in the same statement, the waiting instance of greatest
        order among those not written (`self.unwritten_top`), for when what was read cannot
        tell which instance is next to undo once the write is done.
        """
        log, head = self.log, decision.state
        values = {
            "saga_id": head.saga_id,
            **head_row(head),
            "updated_at": now,
            "finished_at": now if head.status.settled else None,
        }
        if log.postgres:
            doc = log._jsonb(_document(values, values))
            params = {"doc": doc, "saga_id": head.saga_id, "expected": self.version}
            parts = [_Part(("head",), log.sql.doc_head, params)]
        else:
            params = log._params(values) | {"expected": self.version}
            parts = [_Part(("head",), log.sql.raw_head, params)]
        parts += log._step_parts(head.saga_id, decision, messages, output, now)
        parts += log._history_parts(entries)
        undo = _Undo(head.saga_id, tuple(st.name for st in decision.steps)) if next_undo else None
        if self.conn is not None:
            applied = log._execute(self.conn, parts, guarded=True, undo=undo)
            if not applied:
                raise RuntimeError(f"saga {head.saga_id} changed under its row lock")
        else:
            with log._connection() as conn:
                if log.postgres:  # one statement: it commits on its own
                    log.counts.add("sql_transactions")
                    applied = log._execute(conn, parts, guarded=True, undo=undo)
                else:
                    try:
                        with log._transaction(conn):
                            if not log._execute(conn, parts, guarded=True, undo=undo):
                                raise _Unchanged
                        applied = True
                    except _Unchanged:
                        applied = False
        if applied and undo is not None:
            self.unwritten_top = undo.found
        return applied


@dataclass
class _Undo:
    """What `Transition.write` asks of its statement about the next instance to undo."""

    saga_id: str
    written: tuple[str, ...]
    """The instances the transition writes (left out of the read: their rows change)."""
    found: StepState | None = None
    """The waiting instance of greatest order among the others, as they were."""


class _Unchanged(Exception):
    """Rolls back a SQLite transaction whose head write found another version."""


def _document(values: Mapping[str, Any], columns: Iterable[str]) -> dict[str, Any]:
    """A row as JSON for jsonb_populate_record: datetimes as ISO 8601, JSON columns as is."""
    doc = dict(values) if columns is values else {c: values.get(c) for c in columns}
    for c in _TIME_COLUMNS.intersection(doc):
        value = doc[c]
        if isinstance(value, datetime):
            doc[c] = value.isoformat()
    return doc


def _message_row(message: OutboxMessage, now: datetime) -> dict[str, Any]:
    due = message.not_before <= now
    return {
        "task_id": message.task_id,
        "task_name": message.task_name,
        "queue": message.queue,
        "not_before": message.not_before,
        "sent_at": now if due else None,
        "send_count": 1 if due else 0,
        "carrier": message.carrier,
    }


def _sqlite_time(value: datetime) -> str:
    """A UTC datetime as SQLAlchemy stores it on SQLite."""
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
