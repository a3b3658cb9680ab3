"""Commands that run processes: migrate, worker."""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Annotated, Any

import typer
from celery import signals
from celery.utils.nodenames import default_nodename, host_format

from ..engine import utcnow
from ..logs import configure_logging
from ..runtime.worker import SweeperThread
from ..settings import load_settings
from ..store import upgrade_database
from ..system import System, install_worker_logging


def register(app: typer.Typer) -> None:
    """Add the process commands to `app`."""

    @app.command()
    def migrate() -> None:
        """Create or upgrade the saga log's tables (Alembic)."""
        settings = load_settings()
        upgrade_database(settings.database_url)
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
        task_events: Annotated[
            bool,
            typer.Option(
                "--task-events",
                "-E",
                help="Send task events from the start (Flower turns them on when it watches).",
            ),
        ] = False,
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
        born = utcnow()  # before any task can run: a restart of this name is told by it
        holder: dict[str, Any] = {}
        background = SweeperThread(
            lambda: holder["sweeper"], settings.sweep_interval, sweep=sweeper
        )

        def start_sweeper(sender: Any = None, **_: Any) -> None:
            # The heartbeat names this worker as Celery does (its node name).
            holder["sweeper"] = system.sweeper(getattr(sender, "hostname", None), born=born)
            background.start()

        def stop_sweeper(**_: Any) -> None:
            background.stop()
            if "sweeper" in holder:
                with contextlib.suppress(Exception):
                    holder["sweeper"].forget()

        signals.worker_ready.connect(start_sweeper, weak=False)
        signals.worker_shutdown.connect(stop_sweeper, weak=False)
        # Expand %h, %n and %d as the celery command does (and default to celery@host).
        node = host_format(default_nodename(hostname))
        system.celery.Worker(
            queues=selected,
            concurrency=concurrency,
            pool=pool,
            hostname=node,
            loglevel=settings.log_level,
            redirect_stdouts=False,
            # sagakit's own heartbeats tell which workers are alive and what they hold.
            without_gossip=True,
            without_mingle=True,
            task_events=task_events,
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
