"""The SLAM services' own tables (SQLAlchemy Core): one `MetaData` per service.

Each service creates only its own tables, in its own database (see `settings`): the robot
fleet, its allocations and the missions waiting for robots (robots); route plans (planning);
local scans (exploration); finished maps (mapping). Nothing here refers to another
service's table: what crosses services travels in step outputs.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from .settings import Service


class UTCDateTime(sa.TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every dialect (SQLite stores them naive)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> Any:
        """Store UTC; naive on SQLite, which keeps no zone."""
        if value is None:
            return None
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> Any:
        """Return an aware UTC datetime."""
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    """Return the current time, timezone-aware UTC."""
    return datetime.now(UTC)


# --- robots ---------------------------------------------------------------------------------

robots_metadata = sa.MetaData()

ROBOT_STATES = ("active", "retiring", "retired")
"""``retiring``: retired by an operator while a mission held it; retired on its release."""

robots = sa.Table(
    "slam_robots",
    robots_metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("name", sa.String(32), nullable=False, unique=True),
    sa.Column("held_by", sa.String(64), nullable=True, index=True),
    sa.Column("state", sa.String(16), nullable=False, server_default="active"),
    sa.Column("added_at", UTCDateTime, nullable=False),
    sa.Column("retired_at", UTCDateTime, nullable=True),
    sa.CheckConstraint("state IN ('active', 'retiring', 'retired')", name="ck_slam_robots_state"),
    sa.CheckConstraint("state <> 'retired' OR held_by IS NULL", name="ck_slam_robots_retired_free"),
)

allocations = sa.Table(
    "slam_allocations",
    robots_metadata,
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

waits = sa.Table(
    "slam_robot_waits",
    robots_metadata,
    sa.Column("saga_id", sa.String(64), primary_key=True),
    sa.Column("robots", sa.Integer, nullable=False),
    sa.Column("started_at", UTCDateTime, nullable=False),
)
"""When a mission that may wait for robots first asked for them (one row per saga)."""

# --- planning -------------------------------------------------------------------------------

planning_metadata = sa.MetaData()

plans = sa.Table(
    "slam_plans",
    planning_metadata,
    sa.Column("saga_id", sa.String(64), primary_key=True),
    sa.Column("robots", sa.JSON, nullable=False),
    sa.Column("sectors", sa.JSON, nullable=False),
    sa.Column("routes", sa.JSON, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
)

# --- exploration ----------------------------------------------------------------------------

exploration_metadata = sa.MetaData()

scans = sa.Table(
    "slam_scans",
    exploration_metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("saga_id", sa.String(64), nullable=False),
    sa.Column("robot", sa.String(32), nullable=False),
    sa.Column("branch", sa.Integer, nullable=False),
    sa.Column("grid", sa.LargeBinary, nullable=True),
    sa.Column("cells_driven", sa.Integer, nullable=False),
    sa.Column("known_cells", sa.Integer, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.UniqueConstraint("saga_id", "branch", name="uq_slam_scans_saga_branch"),
)

# --- mapping --------------------------------------------------------------------------------

mapping_metadata = sa.MetaData()

maps = sa.Table(
    "slam_maps",
    mapping_metadata,
    sa.Column("saga_id", sa.String(64), primary_key=True),
    sa.Column("png", sa.LargeBinary, nullable=False),
    sa.Column("coverage", sa.Float, nullable=False),
    sa.Column("accuracy", sa.Float, nullable=False),
    sa.Column("path", sa.String(1000), nullable=False),
    sa.Column("stored_at", UTCDateTime, nullable=False),
)

# --- every service ---------------------------------------------------------------------------


def _lifted_faults(metadata: sa.MetaData) -> sa.Table:
    """Injected faults an operator lifted, in each service's own database (`lifting`)."""
    return sa.Table(
        "slam_faults_lifted",
        metadata,
        sa.Column("saga_id", sa.String(64), primary_key=True),
        # A step instance (``explore[1]``), a step (``explore``: every branch) or ``*``.
        sa.Column("step", sa.String(64), primary_key=True),
        sa.Column("lifted_by", sa.String(200), nullable=False),
        sa.Column("reason", sa.String(1000), nullable=False),
        sa.Column("lifted_at", UTCDateTime, nullable=False),
    )


LIFTED_FAULTS: dict[Service, sa.Table] = {
    Service.ROBOTS: _lifted_faults(robots_metadata),
    Service.PLANNING: _lifted_faults(planning_metadata),
    Service.EXPLORATION: _lifted_faults(exploration_metadata),
    Service.MAPPING: _lifted_faults(mapping_metadata),
}

SCHEMAS: dict[Service, sa.MetaData] = {
    Service.ROBOTS: robots_metadata,
    Service.PLANNING: planning_metadata,
    Service.EXPLORATION: exploration_metadata,
    Service.MAPPING: mapping_metadata,
}
"""Each service's tables."""
