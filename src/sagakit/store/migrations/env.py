"""Alembic environment: runs on the connection sagakit hands over."""

from alembic import context

from sagakit.store.schema import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata, render_as_batch=False)
with context.begin_transaction():
    context.run_migrations()
