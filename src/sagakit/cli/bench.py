"""`sagakit bench`: N sagas of M no-op steps against the configured broker and database."""

from __future__ import annotations

import json
import time
from contextlib import ExitStack
from typing import Annotated, Any

import typer

from ..core.errors import InvalidInput
from ..core.state import SETTLED_STATUSES
from . import render
from .sagas import open_system


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100), nearest rank."""
    ordered = sorted(values)
    index = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered)) - 1))
    return ordered[index]


def register(app: typer.Typer) -> None:
    """Add `bench` to `app`."""

    @app.command()
    def bench(
        sagas: Annotated[int, typer.Option("--sagas", "-n", min=1, max=100_000)] = 200,
        steps: Annotated[int, typer.Option("--steps", "-m", min=1)] = 4,
        timeout: Annotated[float, typer.Option(help="Seconds to wait for all sagas.")] = 600.0,
        as_json: Annotated[bool, typer.Option("--json")] = False,
    ) -> None:
        """Start N sagas at once, wait for all, print latency percentiles and sagas/s."""
        import statistics

        from ..bench import MAX_STEPS
        from ..logs import configure_logging

        if steps > MAX_STEPS:
            raise InvalidInput("--steps", f"at most {MAX_STEPS}")
        configure_logging("WARNING")
        with ExitStack() as stack:
            system = open_system(stack, worker=True, imports=["sagakit.bench"])
            engine = system.engine
            began = time.monotonic()
            ids = [engine.start(f"bench_{steps}", {}).saga_id for _ in range(sagas)]
            started = time.monotonic() - began
            deadline = time.monotonic() + timeout
            pending = set(ids)
            while pending and time.monotonic() < deadline:
                # One query per poll: the benchmark must not load the database it measures.
                statuses = system.queries.statuses(sorted(pending))
                pending = {s for s in pending if statuses.get(s) not in SETTLED_STATUSES}
                time.sleep(0.1)
            records = [system.queries.get(s) for s in ids]
        done = [r for r in records if r.finished_at is not None]
        latencies = [(r.finished_at - r.created_at).total_seconds() for r in done if r.finished_at]
        first = min(r.created_at for r in records)
        last = max((r.finished_at for r in done if r.finished_at), default=first)
        elapsed = max((last - first).total_seconds(), 1e-9)
        result: dict[str, Any] = {
            "sagas": sagas,
            "steps": steps,
            "completed": sum(r.status == "completed" for r in records),
            "unfinished": len(pending),
            "start_seconds": round(started, 3),
            "elapsed_seconds": round(elapsed, 3),
            "sagas_per_second": round(len(done) / elapsed, 1),
            "broker": "embedded" if system.settings.embedded else "configured",
        }
        if latencies:
            result.update(
                {f"p{q}_ms": round(percentile(latencies, q) * 1000, 1) for q in (50, 90, 99)}
            )
            result["mean_ms"] = round(statistics.fmean(latencies) * 1000, 1)
        if as_json:
            typer.echo(json.dumps(result))
        else:
            render.console().print_json(data=result)
        if pending:
            raise typer.Exit(1)
