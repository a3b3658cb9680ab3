"""The saga log (SQL): schema, migrations, the hot path, recovery, reads and metrics."""

from .db import make_db, normalise_url
from .log import SqlLog
from .migrate import upgrade, upgrade_database
from .reads import HistoryRecord, SagaRecord, StepRecord

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
