"""The SLAM mission on an embedded system, for example tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from sagakit import Settings, System
from sagakit.store import SagaRecord
from sagakit_examples.slam import databases, fleet
from sagakit_examples.slam.settings import Service
from sagakit_examples.slam.tables import SCHEMAS

SERVICE_OF = {metadata: service for service, metadata in SCHEMAS.items()}
"""The service owning each table's MetaData."""


class Mission:
    """A running embedded system plus the SLAM services' databases, for one test."""

    def __init__(self, system: System, output: Path) -> None:
        self.system = system
        self.engine = system.engine
        self.output = output
        self.db = databases.current().engine(Service.ROBOTS)

    def start(self, **fields: Any) -> str:
        """Start a mission (3 robots in the warehouse unless `fields` say otherwise)."""
        return self.engine.start("slam", {"robots": 3, "area": "warehouse", **fields}).saga_id

    def run(self, timeout: float = 30.0, **fields: Any) -> SagaRecord:
        """Start a mission with `fields` as input and wait until it settles."""
        return self.wait(self.start(**fields), timeout=timeout)

    def wait(self, saga_id: str, timeout: float = 30.0) -> SagaRecord:
        """Wait until the saga settles."""
        return self.system.queries.wait(saga_id, timeout=timeout)

    def outputs(self, saga_id: str) -> dict[str, Any]:
        """What each step instance returned, by instance name."""
        return {s.state.name: s.output for s in self.system.queries.steps(saga_id)}

    def history(self, saga_id: str) -> list[Any]:
        """The saga's history entries."""
        return self.system.queries.history(saga_id)

    def events(self, saga_id: str, event: str) -> list[str]:
        """Steps named by the history entries of kind `event`, in order."""
        return [h.step or "" for h in self.history(saga_id) if h.event == event]

    def count(self, table: sa.Table, *where: Any) -> int:
        """Rows of a service table matching `where`, in that service's database."""
        engine = databases.current().engine(SERVICE_OF[table.metadata])
        with engine.connect() as conn:
            query = sa.select(sa.func.count()).select_from(table).where(*where)
            return int(conn.execute(query).scalar_one())

    def held(self) -> list[dict[str, Any]]:
        """Robots currently held by any saga."""
        return [robot for robot in fleet.list_fleet(self.db) if robot["held_by"] is not None]


def slam_system(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    url: str = "",
    fleet_size: int = 8,
    **env: str,
) -> System:
    """An embedded system whose saga log is `url` (a SQLite file by default).

    The SLAM services share that database unless `env` sets ``SLAM_*_DATABASE_URL``.
    """
    url = url or f"sqlite:///{tmp_path}/slam.db"
    monkeypatch.setenv("SAGAKIT_DATABASE_URL", url)
    monkeypatch.setenv("SLAM_OUTPUT_DIR", str(tmp_path / "maps"))
    monkeypatch.setenv("SLAM_FLEET_SIZE", str(fleet_size))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    databases.reset()
    return System(Settings(database_url=url, imports=["sagakit_examples.slam"], sweep_interval=0.2))
