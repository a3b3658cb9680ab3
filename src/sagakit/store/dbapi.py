"""The saga log's DB-API connections for the read side, with or without SQLAlchemy.

The read side (`store.reads`) runs its statements as plain SQL on a driver's own connection
(sqlite3 or psycopg), which it asks a `Connections` for: a SQLAlchemy engine's pool
(`store.db.Pooled`: the API, the workers, the tests), or `Direct`, which opens one
connection itself. `sagakit list` and `sagakit show` use `Direct`: they run a few
statements and exit, and importing SQLAlchemy would cost them more than everything else.

Nothing here imports SQLAlchemy, and each driver is imported only when it connects.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any, Protocol

CONNECT_TIMEOUT = 5
"""Seconds to wait for a PostgreSQL server to accept a connection."""

SQLITE_TIMEOUT = 30.0
"""Seconds a SQLite statement waits for a writer's lock."""

_SQLITE = ("sqlite", "sqlite+pysqlite")
_POSTGRES = ("postgres", "postgresql", "postgresql+psycopg")


def normalise_url(url: str) -> str:
    """Use psycopg 3 for PostgreSQL URLs given without a driver."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


class Connections(Protocol):
    """Where the read side gets a DB-API connection to the saga log."""

    postgres: bool
    """PostgreSQL (psycopg, ``%(name)s`` parameters), else SQLite (``:name``)."""

    def connect(self) -> AbstractContextManager[Any]:
        """A driver connection that runs each statement on its own (no transaction kept)."""
        ...


class Direct:
    """One connection opened with the driver itself, on first use, kept until `close`.

    For a process that makes a few reads and exits. Takes the URLs `supports` says it does;
    others (another driver, SQLite URI options) need SQLAlchemy's engine (`store.db.Pooled`).
    """

    def __init__(self, url: str) -> None:
        if not self.supports(url):
            raise ValueError(f"not a URL Direct opens: {url.split('://', 1)[0]}://...")
        scheme, _, rest = url.partition("://")
        self.postgres = scheme.lower() in _POSTGRES
        self._target = f"postgresql://{rest}" if self.postgres else _sqlite_path(rest)
        self._conn: Any = None

    @staticmethod
    def supports(url: str) -> bool:
        """True for PostgreSQL URLs with psycopg or no driver, and plain SQLite files."""
        scheme, _, rest = url.partition("://")
        scheme = scheme.lower()
        return scheme in _POSTGRES or (scheme in _SQLITE and "?" not in rest)

    @contextmanager
    def connect(self) -> Iterator[Any]:
        """The connection (opened now if it is not yet)."""
        if self._conn is None:
            self._conn = self._open()
        yield self._conn

    def _open(self) -> Any:
        if self.postgres:
            import psycopg

            return psycopg.connect(self._target, autocommit=True, connect_timeout=CONNECT_TIMEOUT)
        import sqlite3

        # Like SQLAlchemy's pysqlite, this creates an empty file if there is none.
        conn = sqlite3.connect(self._target, timeout=SQLITE_TIMEOUT, isolation_level=None)
        conn.execute("PRAGMA query_only = ON")  # a reader: never takes the write lock
        return conn

    def close(self) -> None:
        """Close the connection, if it was opened."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _sqlite_path(rest: str) -> str:
    """The file of a SQLite URL's remainder as SQLAlchemy reads it (``///relative.db``,
    ``////absolute.db``; nothing or ``:memory:`` for an in-memory database)."""
    path = rest[1:] if rest.startswith("/") else rest
    return path or ":memory:"
