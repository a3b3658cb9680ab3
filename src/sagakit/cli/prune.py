"""`sagakit prune`: remove old completed and compensated sagas from the saga log."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    """Add `prune` to `app`."""

    @app.command()
    def prune(
        older_than: Annotated[
            str, typer.Option("--older-than", help="Age, e.g. 30d, 12h, 90m (or seconds).")
        ],
        batch: Annotated[int, typer.Option(min=1, max=10_000, help="Sagas per transaction.")] = 500,
    ) -> None:
        """Remove completed and compensated sagas that finished longer ago than --older-than.

        Failed sagas (they wait for an operator) and sagas not yet counted in /metrics stay;
        each batch is one short transaction. Set SAGAKIT_RETENTION to have the sweepers do it.
        """
        from ..settings import load_settings
        from ..store import make_db, upgrade
        from ..store.prune import parse_age
        from ..store.prune import prune as run

        age = parse_age(older_than)
        settings = load_settings()
        db = make_db(settings.database_url)
        try:
            upgrade(db)
            cutoff = datetime.now(UTC) - age
            removed = run(db, cutoff, batch=batch)
        finally:
            db.dispose()
        typer.echo(f"pruned {removed} sagas that finished before {cutoff:%Y-%m-%d %H:%M:%S} UTC")
