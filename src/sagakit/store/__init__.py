"""The saga log (SQL): schema, migrations, the hot path, recovery, reads and metrics."""

from typing import TYPE_CHECKING, Any

from .db import make_db, normalise_url
from .log import SqlLog
from .reads import HistoryRecord, SagaRecord, StepRecord

if TYPE_CHECKING:
    from .migrate import upgrade, upgrade_database


def __getattr__(name: str) -> Any:
    # Alembic (and Mako) load only for a command that migrates, not for every read.
    if name in ("upgrade", "upgrade_database"):
        from . import migrate

        return getattr(migrate, name)
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
