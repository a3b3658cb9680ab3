"""The saga log (SQL): schema, migrations, the hot path, recovery, reads and metrics."""

from typing import TYPE_CHECKING, Any

from .reads import HistoryRecord, SagaRecord, StepRecord

if TYPE_CHECKING:
    from .db import make_db, normalise_url
    from .log import SqlLog
    from .migrate import upgrade, upgrade_database

_LAZY = {
    "make_db": "db",
    "normalise_url": "db",
    "SqlLog": "log",
    "upgrade": "migrate",
    "upgrade_database": "migrate",
}
"""Names imported on first use: SQLAlchemy loads only for what writes (or migrates, with
Alembic and Mako), not for the read side (`reads`), which runs on DB-API connections."""


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "HistoryRecord",
    "SagaRecord",
    "SqlLog",
    "StepRecord",
    "make_db",
    "normalise_url",
    "upgrade",
    "upgrade_database",
]
