"""The saga log (SQL): schema, migrations and SqlSagaStore."""

from .migrate import upgrade, upgrade_database
from .records import AttemptRecord, Claim, OutboxMessage, SagaRecord, TransitionRecord
from .schema import UTCDateTime
from .sql import SqlSagaStore, make_engine

__all__ = [
    "AttemptRecord",
    "Claim",
    "OutboxMessage",
    "SagaRecord",
    "SqlSagaStore",
    "TransitionRecord",
    "UTCDateTime",
    "make_engine",
    "upgrade",
    "upgrade_database",
]
