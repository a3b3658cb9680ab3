"""Apply the saga log's Alembic migrations."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import command
from alembic.config import Config

from .db import make_db

_LOCK_ID = 0x5A6A_1D  # PostgreSQL advisory lock: one migrator at a time


def alembic_config(connection: sa.Connection) -> Config:
    """Return an Alembic config bound to `connection`."""
    config = Config()
    config.set_main_option("script_location", "sagakit.store:migrations")
    config.attributes["connection"] = connection
    return config


def upgrade_database(url: str) -> None:
    """Migrate the database at `url` to head, and close the connection used for it.

    Closing matters: a pooled connection left open here would be inherited by every
    prefork worker process.
    """
    engine = make_db(url)
    try:
        upgrade(engine)
    finally:
        engine.dispose()


def upgrade(engine: sa.Engine, revision: str = "head") -> None:
    """Bring the schema to `revision`; safe to call from several processes at once."""
    with engine.connect() as connection:
        if engine.dialect.name == "postgresql":
            connection.execute(sa.text("SELECT pg_advisory_lock(:id)"), {"id": _LOCK_ID})
            connection.commit()
        try:
            command.upgrade(alembic_config(connection), revision)
            connection.commit()
        finally:
            if engine.dialect.name == "postgresql":
                connection.execute(sa.text("SELECT pg_advisory_unlock(:id)"), {"id": _LOCK_ID})
                connection.commit()
