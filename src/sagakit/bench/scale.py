"""`sagakit bench --scale N`: the saga log's reads, sweeps and /metrics with N sagas in it.

The rows come from one SQL script (`scale.sql`, generate_series), not from N sagas run:
N sagas of two types over 30 days (90 % completed, 6 % compensated, 1 % failed, the last 3 %
in flight), one step row and one attempt outcome in the history per saga. They go into a
scratch database beside the configured one (``<name>_scale``, dropped afterwards), migrated
to head first. Then the sweeper folds the metrics up to its watermark, as it does while it
runs, and every measured query runs `REPEAT` times: p50 and p95 are reported, with the
bound (100 ms) each must stay under.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from importlib import resources
from typing import Any

import sqlalchemy as sa
from prometheus_client import generate_latest

from ..queries import Queries, encode_cursor
from ..settings import Settings
from ..store import make_db, recovery, stats, upgrade
from ..store.db import Pooled
from .compare import BenchError

REPEAT = 40
BOUND_MS = 100.0


def _scratch(settings: Settings) -> tuple[sa.URL, sa.URL]:
    url = sa.make_url(settings.database_url)
    if not url.drivername.startswith("postgresql"):
        raise BenchError("--scale runs on PostgreSQL: set SAGAKIT_DATABASE_URL to a PostgreSQL URL")
    url = url.set(drivername="postgresql+psycopg")
    scratch = url.set(database=f"{url.database or 'postgres'}_scale")
    return url.set(database="postgres"), scratch


def scale(
    settings: Settings, sagas: int, *, progress: Callable[[str], None] = lambda _: None
) -> dict[str, Any]:
    """Generate a saga log of `sagas` sagas and time what reads it; see the module docstring."""
    admin_url, url = _scratch(settings)
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    name = url.database
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        db = make_db(url.render_as_string(hide_password=False))
        try:
            return _measure(db, sagas, progress)
        finally:
            db.dispose()
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _measure(db: sa.Engine, sagas: int, progress: Callable[[str], None]) -> dict[str, Any]:
    upgrade(db)
    progress(f"generating {sagas:,} sagas with one SQL script")
    began = time.monotonic()
    script = resources.files("sagakit.bench").joinpath("scale.sql").read_text()
    with db.begin() as conn:
        # The DB-API cursor without parameters: the script's % are SQL, not placeholders.
        cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        cursor.execute(script.replace(":sagas", str(int(sagas))))
    with db.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql("ANALYZE")
    generated = time.monotonic() - began
    now = datetime.now(UTC)
    progress("folding the metrics up to the watermark (what the sweeper does as it runs)")
    folds = 0
    while stats.fold(db, now) and folds < 10_000:
        folds += 1
    queries = Queries(Pooled(db))
    with db.connect() as conn:
        ids = list(conn.execute(sa.text("SELECT saga_id FROM sagakit_sagas")).scalars())
        middle = conn.execute(
            sa.text(
                "SELECT saga_id FROM sagakit_sagas ORDER BY created_at, saga_id "
                "OFFSET :half LIMIT 1"
            ),
            {"half": sagas // 2},
        ).scalar_one()
    deep = encode_cursor(queries.get(middle))
    rng = random.Random(7)
    from ..api.metrics import registry_for

    registry = registry_for(db, ["slam", "order"])
    day_ago = now - timedelta(days=1)
    measured: dict[str, Callable[[], Any]] = {
        "list newest first": lambda: queries.page(limit=50),
        "list by status": lambda: queries.page(status="compensated", limit=50),
        "list by type": lambda: queries.page(saga_type="order", limit=50),
        "list by type and status": lambda: queries.page(
            saga_type="order", status="failed", limit=50
        ),
        "list created in the last day": lambda: queries.page(created_after=day_ago, limit=50),
        "list past the 500,000th (cursor)": lambda: queries.page(cursor=deep, limit=50),
        "search by idempotency key": lambda: queries.page(search=f"key-{rng.randrange(sagas)}"),
        "get one saga (detail)": lambda: queries.detail(rng.choice(ids)),
        "sweep: due messages": lambda: recovery.take_due(db, now, [("slam", 1), ("order", 1)], 200),
        "sweep: unclaimed messages": lambda: recovery.stale_sends(db, now, 30.0, 200),
        "sweep: overdue sagas": lambda: recovery.overdue_sagas(db, now, 200),
        "sweep: silent workers": lambda: recovery.take_silent(db, now - timedelta(seconds=30)),
        "sweep: outbox depth": lambda: recovery.outbox(db, now),
        "sweep: carried attempts": lambda: recovery.carried_by(
            db, [f"{rng.choice(ids)}.01.a.fwd.1" for _ in range(8)]
        ),
        "sweep: fold metrics": lambda: stats.fold(db, datetime.now(UTC)),
        "GET /metrics (collect)": lambda: generate_latest(registry),
        "dashboard: counts by status": lambda: queries.counts(),
        "dashboard: counts of a type": lambda: queries.counts(saga_type="order"),
        "dashboard: counts of the last day": lambda: queries.counts(created_after=day_ago),
        "dashboard: needs attention": lambda: queries.attention(),
        "dashboard: health, last hour": lambda: queries.health(datetime.now(UTC)),
    }
    timings: dict[str, Any] = {}
    for label, call in measured.items():
        progress(f"timing {label}")
        call()  # warm
        samples = []
        for _ in range(REPEAT):
            t0 = time.perf_counter()
            call()
            samples.append((time.perf_counter() - t0) * 1000)
        samples.sort()
        p95 = samples[max(0, round(0.95 * len(samples)) - 1)]
        timings[label] = {
            "p50_ms": round(statistics.median(samples), 2),
            "p95_ms": round(p95, 2),
            "within_bound": p95 < BOUND_MS,
        }
    return {
        "sagas": sagas,
        "generated_seconds": round(generated, 1),
        "folds": folds,
        "bound_ms": BOUND_MS,
        "all_within_bound": all(t["within_bound"] for t in timings.values()),
        "timings": timings,
    }
