"""Connections to the saga log: SQLAlchemy engines with the settings sagakit relies on."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa

from .dbapi import CONNECT_TIMEOUT, SQLITE_TIMEOUT, normalise_url

__all__ = ["CONNECT_TIMEOUT", "Pooled", "make_db", "normalise_url"]


def make_db(url: str, *, pool_size: int = 5, autocommit: bool = False) -> sa.Engine:
    """Create an engine for the saga log.

    `autocommit` engines hand out connections that run each statement on its own, with
    explicit transactions where needed: what the hot path's raw statements expect.
    """
    url = normalise_url(url)
    options: dict[str, Any] = {}
    if autocommit:
        options["isolation_level"] = "AUTOCOMMIT"
    if url.startswith("sqlite"):
        db = sa.create_engine(
            url, connect_args={"timeout": SQLITE_TIMEOUT, "check_same_thread": False}, **options
        )
        sa.event.listen(db, "connect", _sqlite_on_connect)
        sa.event.listen(db, "begin", _sqlite_on_begin)
        return db
    # No pre-ping: it costs a round trip per checkout; stale connections are recycled. A
    # connect timeout, so a host that drops packets is an outage in seconds, not minutes.
    if url.startswith("postgresql"):
        options["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT}
    return sa.create_engine(url, pool_size=pool_size, max_overflow=10, pool_recycle=1800, **options)


class Pooled:
    """The read side's connections (`store.dbapi.Connections`) from an engine's pool."""

    def __init__(self, db: sa.Engine) -> None:
        self.db = db
        self.postgres = db.dialect.name == "postgresql"
        self._driver_error: Any = db.dialect.loaded_dbapi.Error

    @contextmanager
    def connect(self) -> Iterator[Any]:
        """A pooled connection's driver connection, back to the pool (rolled back) after.

        A connection the error shows lost is dropped, with every idle one in the pool, as
        SQLAlchemy's own connections do: they were opened before the server went away.
        """
        pooled = self.db.raw_connection()
        try:
            yield pooled.driver_connection
        except self._driver_error as exc:
            if self.db.dialect.is_disconnect(exc, pooled.dbapi_connection, None):
                pooled.invalidate(exc)
                self.db.dispose()
            raise
        finally:
            pooled.close()


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    # Let SQLAlchemy's "begin" event issue BEGIN IMMEDIATE instead of pysqlite's lazy BEGIN,
    # so a transition takes the write lock before it reads the saga.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _sqlite_on_begin(conn: sa.Connection) -> None:
    conn.exec_driver_sql("BEGIN IMMEDIATE")
