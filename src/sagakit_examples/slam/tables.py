"""The SLAM services' own tables (SQLAlchemy Core) and a per-process engine cache.

The services keep their state apart from the saga log: the robot fleet and its allocation log,
route plans, local scans and finished maps. ``SLAM_DATABASE_URL`` names the database; without
it the services share the saga log's database (``SAGAKIT_DATABASE_URL``).
"""

from __future__ import annotations

import logging
import os
import threading
from datetime import UTC, datetime

import sqlalchemy as sa

from sagakit import load_settings
from sagakit.idempotency import ensure_table
from sagakit.store import UTCDateTime, make_engine, upgrade
from sagakit.store.sql import normalise_url

logger = logging.getLogger(__name__)

FLEET_SIZE = 8
_LOCK_ID = 0x51A3_0001
"""PostgreSQL advisory lock held while a process creates the schema and seeds the fleet."""

metadata = sa.MetaData()


robots = sa.Table(
    "slam_robots",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("name", sa.String(32), nullable=False, unique=True),
    sa.Column("held_by", sa.String(64), nullable=True, index=True),
)

allocations = sa.Table(
    "slam_allocations",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("robot_id", sa.Integer, sa.ForeignKey("slam_robots.id"), nullable=False),
    sa.Column("saga_id", sa.String(64), nullable=False, index=True),
    sa.Column("allocated_at", UTCDateTime, nullable=False),
    sa.Column("released_at", UTCDateTime, nullable=True),
)
# The semantic lock, enforced by the database: at most one open allocation per robot.
sa.Index(
    "uq_slam_allocations_open_robot",
    allocations.c.robot_id,
    unique=True,
    sqlite_where=allocations.c.released_at.is_(None),
    postgresql_where=allocations.c.released_at.is_(None),
)

plans = sa.Table(
    "slam_plans",
    metadata,
    sa.Column("saga_id", sa.String(64), primary_key=True),
    sa.Column("robots", sa.JSON, nullable=False),
    sa.Column("sectors", sa.JSON, nullable=False),
    sa.Column("paths", sa.JSON, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
)

scans = sa.Table(
    "slam_scans",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("saga_id", sa.String(64), nullable=False),
    sa.Column("robot_id", sa.Integer, nullable=False),
    sa.Column("branch", sa.Integer, nullable=False),
    sa.Column("grid", sa.LargeBinary, nullable=True),
    sa.Column("waypoints_done", sa.Integer, nullable=False),
    sa.Column("known_cells", sa.Integer, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.UniqueConstraint("saga_id", "branch", name="uq_slam_scans_saga_branch"),
)

maps = sa.Table(
    "slam_maps",
    metadata,
    sa.Column("saga_id", sa.String(64), primary_key=True),
    sa.Column("png", sa.LargeBinary, nullable=False),
    sa.Column("coverage", sa.Float, nullable=False),
    sa.Column("accuracy", sa.Float, nullable=False),
    sa.Column("path", sa.String(1000), nullable=False),
    sa.Column("stored_at", UTCDateTime, nullable=False),
)

_engines: dict[str, sa.Engine] = {}
_lock = threading.Lock()


def utcnow() -> datetime:
    """Return the current time, timezone-aware UTC."""
    return datetime.now(UTC)


def database_url() -> str:
    """Return the services' database URL: ``SLAM_DATABASE_URL`` or the saga log's."""
    return normalise_url(os.environ.get("SLAM_DATABASE_URL") or load_settings().database_url)


def get_engine(url: str | None = None) -> sa.Engine:
    """Return this process's engine for `url` (default `database_url()`), schema ensured."""
    url = normalise_url(url or database_url())
    with _lock:
        engine = _engines.get(url)
        if engine is None:
            engine = make_engine(url)
            ensure_schema(engine)
            _engines[url] = engine
        return engine


def dispose_engines() -> None:
    """Close and forget every cached engine (tests, forked processes)."""
    with _lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()


def fleet_size() -> int:
    """Number of robots seeded into an empty fleet (``SLAM_FLEET_SIZE``, default 8)."""
    size = int(os.environ.get("SLAM_FLEET_SIZE", str(FLEET_SIZE)))
    if not 1 <= size <= 999:
        raise ValueError(f"SLAM_FLEET_SIZE must be between 1 and 999, got {size}")
    return size


def ensure_schema(engine: sa.Engine) -> None:
    """Create the tables and the idempotency table, and seed an empty fleet.

    Idempotent, and safe when several processes call it at once (a PostgreSQL advisory lock
    serialises them; on SQLite every write transaction holds the database's write lock).
    """
    postgres = engine.dialect.name == "postgresql"
    with engine.connect() as lock:
        if postgres:
            lock.execute(sa.text("SELECT pg_advisory_lock(:id)"), {"id": _LOCK_ID})
            lock.commit()
        try:
            _ensure_idempotency_table(engine)
            with engine.begin() as conn:
                metadata.create_all(conn, checkfirst=True)
                if conn.execute(sa.select(sa.func.count()).select_from(robots)).scalar_one():
                    return
                size = fleet_size()
                conn.execute(
                    robots.insert(),
                    [
                        {"id": number, "name": f"scout-{number:02d}", "held_by": None}
                        for number in range(1, size + 1)
                    ],
                )
                logger.info("seeded a fleet of %d robots", size)
        finally:
            if postgres:
                lock.execute(sa.text("SELECT pg_advisory_unlock(:id)"), {"id": _LOCK_ID})
                lock.commit()


def _ensure_idempotency_table(engine: sa.Engine) -> None:
    # When the services share the saga log's database, the saga log's migration owns the
    # idempotency table: creating it here first would make that migration fail later.
    if engine.url == sa.make_url(normalise_url(load_settings().database_url)):
        upgrade(engine)
    else:
        ensure_table(engine)
