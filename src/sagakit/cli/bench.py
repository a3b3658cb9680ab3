"""`sagakit bench`: sagakit measured on the configured broker and database.

- ``sagakit bench``: N sagas of M no-op steps at once; latency percentiles and sagas/s (runs on
  the embedded default too);
- ``--compare``: a saga against a raw Celery task and a Celery chain, side by side, as ratios;
- ``--fan-out W[,W...]``: per-branch CPU and bytes written at each fan-out width;
- ``--backlog N``: N sagas started at once against one worker: re-sends, throughput, memory;
- ``--scale ROWS``: the read side, the sweeper and /metrics on a saga log of ROWS sagas.
"""

from __future__ import annotations

import json
import time
from contextlib import ExitStack
from typing import Annotated, Any

import typer

from ..core.errors import InvalidInput

MAX_STEPS = 8


def _widths(value: str | None) -> list[int]:
    if value is None:
        return []
    try:
        widths = [int(part) for part in value.split(",") if part.strip()]
    except ValueError:
        raise InvalidInput("--fan-out", f"{value!r} is not a list of widths like 5,500") from None
    if not widths or any(not 1 <= w <= 10_000 for w in widths):
        raise InvalidInput("--fan-out", "widths must be between 1 and 10000")
    return widths


def register(app: typer.Typer) -> None:
    """Add `bench` to `app`."""

    @app.command()
    def bench(
        sagas: Annotated[
            int, typer.Option("--sagas", "-n", min=1, max=100_000, help="Units in flight.")
        ] = 200,
        steps: Annotated[int, typer.Option("--steps", "-m", min=1)] = 4,
        compare: Annotated[
            bool, typer.Option(help="A saga and an eager one against a raw task and a chain.")
        ] = False,
        rounds: Annotated[int, typer.Option(min=1, max=20, help="Interleaved rounds.")] = 3,
        runs: Annotated[int, typer.Option(min=1, max=1000, help="Latency runs per round.")] = 20,
        concurrency: Annotated[
            int, typer.Option("--concurrency", "-c", min=1, max=64, help="Worker processes.")
        ] = 2,
        fan_out: Annotated[
            str | None, typer.Option("--fan-out", help="Widths to compare, e.g. 5,500.")
        ] = None,
        backlog: Annotated[
            int | None,
            typer.Option(min=1, max=1_000_000, help="Sagas started at once on one worker."),
        ] = None,
        scale: Annotated[
            int | None,
            typer.Option(min=1000, max=10_000_000, help="Sagas in a generated saga log."),
        ] = None,
        choreographed: Annotated[
            bool,
            typer.Option(help="Run the burst orchestrated, then choreographed (needs Redis)."),
        ] = False,
        timeout: Annotated[float, typer.Option(help="Seconds to wait for each phase.")] = 600.0,
        as_json: Annotated[bool, typer.Option("--json")] = False,
    ) -> None:
        """Measure sagakit on the configured broker and database.

        Without a mode: --sagas sagas of --steps no-op steps at once; latency percentiles and
        sagas/s. --compare: a saga, and the same saga defined eager, against a raw Celery
        task and a Celery chain in the same run, as ratios. --fan-out 5,500: CPU and bytes
        per branch at each width. --backlog N: N sagas at once against one worker (re-sends,
        throughput, memory). --scale ROWS: the read side, the sweeper and /metrics on a
        generated log of ROWS sagas.
        """
        if steps > MAX_STEPS:
            raise InvalidInput("--steps", f"at most {MAX_STEPS}")
        from ..logs import configure_logging
        from . import render

        configure_logging("WARNING")
        progress = (lambda _: None) if as_json else (lambda s: render.console(stderr=True).print(s))
        result: dict[str, Any]
        if compare:
            from ..bench.compare import compare as run_compare
            from ..settings import load_settings

            report = run_compare(
                load_settings(),
                steps=steps,
                rounds=rounds,
                in_flight=sagas,
                runs=runs,
                concurrency=concurrency,
                timeout=timeout,
                progress=progress,
            )
            result = report.summary()
        elif fan_out is not None:
            from ..bench.modes import fan_out as run_fan_out
            from ..settings import load_settings

            result = run_fan_out(
                load_settings(), _widths(fan_out), rounds=rounds, timeout=timeout, progress=progress
            )
        elif backlog is not None:
            from ..bench.modes import backlog as run_backlog
            from ..settings import load_settings

            result = run_backlog(
                load_settings(),
                backlog,
                steps=steps,
                burst=sagas,
                concurrency=1,
                timeout=timeout,
                progress=progress,
            )
        elif scale is not None:
            from ..bench.scale import scale as run_scale
            from ..settings import load_settings

            result = run_scale(load_settings(), scale, progress=progress)
        elif choreographed:
            from ..bench.choreography import burst as choreographed_burst
            from ..settings import load_settings

            if not load_settings().redis_url:
                raise InvalidInput("SAGAKIT_REDIS_URL", "--choreographed needs Redis: set it")

            if not as_json:
                render.console(stderr=True).print("orchestrated burst, then choreographed")
            orchestrated = _burst(sagas, steps, timeout, concurrency)
            other = choreographed_burst(
                load_settings(), sagas, steps, concurrency=concurrency, timeout=timeout
            )
            result = {
                "orchestrated": orchestrated,
                "choreographed": other,
                "unfinished": orchestrated["unfinished"] + other["unfinished"],
            }
        else:
            result = _burst(sagas, steps, timeout, concurrency)
        if as_json:
            typer.echo(json.dumps(result))
        else:
            render.console().print_json(data=result)
        if result.get("unfinished"):
            raise typer.Exit(1)


def _burst(sagas: int, steps: int, timeout: float, concurrency: int = 2) -> dict[str, Any]:
    """Start N sagas at once, wait for all; latency percentiles and sagas/s.

    On the embedded default the in-process worker runs them; on a configured broker a
    bench worker subprocess does (`bench.compare.Harness`): no other worker has the bench's
    sagas."""
    from ..bench.burst import settle, summary
    from ..settings import load_settings
    from .sagas import open_system

    settings = load_settings()
    with ExitStack() as stack:
        if settings.embedded:
            system = open_system(stack, worker=True, imports=["sagakit.bench.sagas"])
        else:
            from ..bench.compare import Harness

            harness = Harness(settings, concurrency=concurrency)
            stack.callback(harness.system.close)
            stack.callback(harness.stop_worker)
            harness.start_worker()
            system = harness.system
        engine, queries = system.engine, system.queries
        began = time.monotonic()
        ids = [engine.start(f"bench_{steps}", {}).saga_id for _ in range(sagas)]
        started = time.monotonic() - began
        records, left = settle(queries, ids, timeout)
    result = summary(records, sagas, steps, started, left)
    result["broker"] = "embedded" if settings.embedded else "configured"
    return result
