"""The SLAM services' settings, from ``SLAM_*`` environment variables.

Each of the four services (robots, planning, exploration, mapping) keeps its tables in a
database of its own choosing. Without any setting they all share the saga log's database
(``SAGAKIT_DATABASE_URL``, itself ``sqlite:///sagakit.db`` by default); ``SLAM_DATABASE_URL``
moves all four elsewhere, and ``SLAM_<SERVICE>_DATABASE_URL`` moves one.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

MAX_FLEET = 999
"""Robot ids and names (``scout-001``) stay below this bound."""


class Service(StrEnum):
    """The mission's services, each one a queue and a database."""

    ROBOTS = "robots"
    PLANNING = "planning"
    EXPLORATION = "exploration"
    MAPPING = "mapping"


class SlamSettings(BaseSettings):
    """Where the SLAM services keep their data, and the size of a new fleet.

    Read once by each process that runs the services (a worker, the CLI, the API) and passed
    down; no ``.env`` file is read, as with sagakit's own settings.
    """

    model_config = SettingsConfigDict(
        env_prefix="SLAM_", extra="ignore", frozen=True, populate_by_name=True
    )

    saga_log_url: str = Field(
        default="sqlite:///sagakit.db", validation_alias="SAGAKIT_DATABASE_URL"
    )
    """The saga log's database: where the services' tables go when nothing else is set."""
    database_url: str | None = None
    """``SLAM_DATABASE_URL``: one database for all four services."""
    robots_database_url: str | None = None
    """``SLAM_ROBOTS_DATABASE_URL``: the fleet, its allocations and waiting missions."""
    planning_database_url: str | None = None
    """``SLAM_PLANNING_DATABASE_URL``: route plans."""
    exploration_database_url: str | None = None
    """``SLAM_EXPLORATION_DATABASE_URL``: the robots' local scans."""
    mapping_database_url: str | None = None
    """``SLAM_MAPPING_DATABASE_URL``: finished maps."""
    fleet_size: int = Field(default=8, ge=1, le=MAX_FLEET)
    """``SLAM_FLEET_SIZE``: robots seeded into an empty fleet (``sagakit robots add`` for more)."""
    output_dir: Path = Path("out/maps")
    """``SLAM_OUTPUT_DIR``: where map PNGs are written, one per mission."""

    def database_for(self, service: Service) -> str:
        """The database URL of `service`: its own setting, else the shared one, else the log."""
        own: str | None = getattr(self, f"{Service(service).value}_database_url")
        return own or self.database_url or self.saga_log_url

    def map_path(self, saga_id: str) -> Path:
        """Where the map of `saga_id` is written (an absolute path)."""
        return self.output_dir.resolve() / f"{saga_id}.png"
