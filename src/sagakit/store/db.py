"""Connections to the saga log: SQLAlchemy engines with the settings sagakit relies on."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

CONNECT_TIMEOUT = 5
"""Seconds to wait for a PostgreSQL server to accept a connection."""


def normalise_url(url: str) -> str:
    """Use psycopg 3 for PostgreSQL URLs given without a driver."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


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
            url, connect_args={"timeout": 30, "check_same_thread": False}, **options
        )
        sa.event.listen(db, "connect", _sqlite_on_connect)
        sa.event.listen(db, "begin", _sqlite_on_begin)
        return db
    # No pre-ping: it costs a round trip per checkout; stale connections are recycled. A
    # connect timeout, so a host that drops packets is an outage in seconds, not minutes.
    if url.startswith("postgresql"):
        options["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT}
    return sa.create_engine(url, pool_size=pool_size, max_overflow=10, pool_recycle=1800, **options)


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
