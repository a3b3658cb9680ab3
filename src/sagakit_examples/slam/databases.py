"""The services' databases: one engine per URL, each service's schema made on first use.

`Databases` is built from `SlamSettings`; `current()` holds the one of this process, built
on first use from the environment (a worker's step tasks, the CLI and the API all go
through it), and `reset()` forgets it (tests, a changed environment).
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

import sqlalchemy as sa

from sagakit.idempotency import ensure_table

from .settings import Service, SlamSettings
from .tables import SCHEMAS, robots, utcnow

logger = logging.getLogger(__name__)

_LOCK_ID = 0x51A3_0001
"""PostgreSQL advisory lock held while a process creates a schema or changes the fleet."""


class SchemaMismatch(RuntimeError):
    """A service table exists but lacks columns this version needs."""


def make_engine(url: str) -> sa.Engine:
    """Create an engine; PostgreSQL URLs without a driver use psycopg 3.

    SQLite connections take the write lock when a transaction begins (``BEGIN IMMEDIATE``),
    so a transaction that reads and then writes never fails halfway on a busy database.
    """
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            url = "postgresql+psycopg://" + url[len(prefix) :]
    if not url.startswith("sqlite"):
        return sa.create_engine(url, pool_size=5, max_overflow=10, pool_recycle=1800)
    engine = sa.create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})
    sa.event.listen(engine, "connect", _sqlite_on_connect)
    sa.event.listen(engine, "begin", lambda conn: conn.exec_driver_sql("BEGIN IMMEDIATE"))
    return engine


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.isolation_level = None  # SQLAlchemy's "begin" event issues BEGIN
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def advisory_lock(conn: sa.Connection) -> None:
    """On PostgreSQL, hold the fleet lock until `conn`'s transaction ends (a no-op on SQLite).

    SQLite needs none: every write transaction holds the database's write lock.
    """
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:id)"), {"id": _LOCK_ID})


def ensure_schema(engine: sa.Engine, service: Service, fleet_size: int) -> None:
    """Create `service`'s tables and the idempotency table; seed an empty fleet.

    Idempotent, and safe when several processes call it at once.

    Raises:
        SchemaMismatch: If a table exists without a column this version needs.
    """
    ensure_table(engine)
    with engine.begin() as conn:
        advisory_lock(conn)
        SCHEMAS[service].create_all(conn, checkfirst=True)
        _check_columns(conn, service)
        if service is Service.ROBOTS:
            _seed_fleet(conn, fleet_size)


def _check_columns(conn: sa.Connection, service: Service) -> None:
    inspector = sa.inspect(conn)
    for table in SCHEMAS[service].sorted_tables:
        present = {column["name"] for column in inspector.get_columns(table.name)}
        missing = sorted(set(table.columns.keys()) - present)
        if missing:
            raise SchemaMismatch(
                f"table {table.name} in {conn.engine.url.render_as_string()} lacks "
                f"{', '.join(missing)}: it was made by an older version of the SLAM example; "
                "drop the slam_* tables or point the service at a fresh database"
            )


def _seed_fleet(conn: sa.Connection, size: int) -> None:
    if conn.execute(sa.select(sa.func.count()).select_from(robots)).scalar_one():
        return
    now = utcnow()
    conn.execute(
        robots.insert(),
        [
            {"id": n, "name": robot_name(n), "held_by": None, "state": "active", "added_at": now}
            for n in range(1, size + 1)
        ],
    )
    logger.info("seeded a fleet of %d robots", size)


def robot_name(number: int) -> str:
    """The name of robot `number`: ``scout-01`` ... ``scout-99``, ``scout-100`` ..."""
    return f"scout-{number:02d}"


class Databases:
    """The services' engines for one set of settings; services on one URL share an engine."""

    def __init__(self, settings: SlamSettings) -> None:
        self.settings = settings
        self._engines: dict[str, sa.Engine] = {}
        self._ready: set[Service] = set()
        self._lock = threading.Lock()

    def engine(self, service: Service) -> sa.Engine:
        """The engine of `service`'s database, its schema ensured."""
        url = self.settings.database_for(service)
        with self._lock:
            engine = self._engines.get(url)
            if engine is None:
                engine = self._engines[url] = make_engine(url)
            if service not in self._ready:
                ensure_schema(engine, service, self.settings.fleet_size)
                self._ready.add(service)
            return engine

    def dispose(self) -> None:
        """Close every engine; the next `engine` call connects again."""
        with self._lock:
            for engine in self._engines.values():
                engine.dispose()
            self._engines.clear()
            self._ready.clear()

    def forget_after_fork(self) -> None:
        """In a forked child: drop the parent's pooled connections without closing them."""
        self._lock = threading.Lock()  # another thread may have held it at the fork
        for engine in self._engines.values():
            engine.dispose(close=False)
        self._engines.clear()


_current: Databases | None = None
_current_lock = threading.Lock()


def current() -> Databases:
    """This process's databases, built from the environment on first use."""
    global _current
    with _current_lock:
        if _current is None:
            _current = Databases(SlamSettings())
        return _current


def reset() -> None:
    """Close and forget this process's databases; the next `current()` reads settings anew."""
    global _current
    with _current_lock:
        if _current is not None:
            _current.dispose()
        _current = None


def _after_fork() -> None:
    # A forked worker child must not share the parent's pooled connections.
    global _current_lock
    _current_lock = threading.Lock()
    if _current is not None:
        _current.forget_after_fork()


os.register_at_fork(after_in_child=_after_fork)
