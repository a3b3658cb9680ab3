"""Commands that run processes: migrate, worker."""

from __future__ import annotations

import signal
import threading
from typing import Annotated, Any

import typer
from celery import signals

from ..logs import configure_logging
from ..runtime.worker import Sweeper
from ..settings import load_settings
from ..store import make_engine, upgrade
from ..system import System, install_worker_logging


def register(app: typer.Typer) -> None:
    """Add the process commands to `app`."""

    @app.command()
    def migrate() -> None:
        """Create or upgrade the saga log's tables (Alembic)."""
        settings = load_settings()
        upgrade(make_engine(settings.database_url))
        typer.echo("saga log is up to date")

    @app.command()
    def worker(
        queues: Annotated[
            str | None,
            typer.Option(
                "--queues", "-Q", help="Comma-separated queues (default: every saga queue)."
            ),
        ] = None,
        concurrency: Annotated[int, typer.Option("--concurrency", "-c", min=1)] = 2,
        pool: Annotated[str, typer.Option(help="prefork, threads or solo.")] = "prefork",
        hostname: Annotated[str | None, typer.Option("--hostname", "-n")] = None,
        sweeper: Annotated[bool, typer.Option(help="Run the sweeper in this worker.")] = True,
    ) -> None:
        """Run a Celery worker for saga steps (with the sweeper)."""
        settings = load_settings()
        install_worker_logging(settings)
        configure_logging(settings.log_level, settings.log_format)
        system = System(settings)
        selected = sorted(
            system.queues if not queues else {q.strip() for q in queues.split(",") if q.strip()}
        )
        if settings.embedded:
            _run_embedded(system)
            return
        background = Sweeper(lambda: system.engine, settings.sweep_interval)

        def start_sweeper(**_: Any) -> None:
            if sweeper:
                background.start()

        def stop_sweeper(**_: Any) -> None:
            background.stop()

        signals.worker_ready.connect(start_sweeper, weak=False)
        signals.worker_shutdown.connect(stop_sweeper, weak=False)
        system.celery.Worker(
            queues=selected,
            concurrency=concurrency,
            pool=pool,
            hostname=hostname,
            loglevel=settings.log_level,
            redirect_stdouts=False,
        ).start()


def _run_embedded(system: System) -> None:
    """Embedded mode: an in-process worker and sweeper until SIGINT/SIGTERM."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    system.start_embedded()
    typer.echo("embedded worker running (SQLite + in-process broker); Ctrl-C to stop")
    stop.wait()
    system.close()
