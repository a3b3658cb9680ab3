"""Commands that run processes: migrate, worker."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from ..settings import Settings
    from ..system import System
    from .outage_log import OutageLog

logger = logging.getLogger(__name__)

MAX_DELAY = 30.0
"""Longest wait between two attempts to reach the database at start (doubling from 1 s)."""


def register(app: typer.Typer) -> None:
    """Add the process commands to `app`."""

    @app.command()
    def migrate() -> None:
        """Create or upgrade the saga log's tables (Alembic)."""
        from ..settings import load_settings
        from ..store import upgrade_database

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
        concurrency: Annotated[
            str,
            typer.Option(
                "--concurrency",
                "-c",
                metavar="N",
                help="Pool processes or threads; 0 for one per CPU, 'auto' for the CPU quota.",
            ),
        ] = "2",
        pool: Annotated[
            str,
            typer.Option("--pool", "-P", metavar="POOL", help="prefork, threads, solo, ..."),
        ] = "prefork",
        autoscale: Annotated[
            str | None,
            typer.Option(metavar="MAX[,MIN]", help="Grow the pool up to MAX, shrink it to MIN."),
        ] = None,
        hostname: Annotated[
            str | None,
            typer.Option(
                "--hostname",
                "-n",
                metavar="NAME",
                help="Node name, e.g. robots@%h (%h, %n, %d expand; default celery@%h).",
            ),
        ] = None,
        loglevel: Annotated[
            str | None,
            typer.Option(
                "--loglevel",
                "-l",
                metavar="LEVEL",
                help="DEBUG, INFO, WARNING, ERROR or CRITICAL (default: SAGAKIT_LOG_LEVEL).",
            ),
        ] = None,
        max_tasks_per_child: Annotated[
            str | None,
            typer.Option(metavar="N", help="Replace a pool process after N tasks."),
        ] = None,
        max_memory_per_child: Annotated[
            str | None,
            typer.Option(
                metavar="KIB",
                help="Replace a pool process once a task leaves it above KIB resident memory.",
            ),
        ] = None,
        sweeper: Annotated[bool, typer.Option(help="Run the sweeper in this worker.")] = True,
        gossip: Annotated[
            bool,
            typer.Option(
                "--with-gossip/--without-gossip",
                help="Celery's gossip between workers (sagakit's heartbeats serve instead).",
            ),
        ] = False,
        mingle: Annotated[
            bool,
            typer.Option(
                "--with-mingle/--without-mingle",
                help="Celery's start-up synchronisation with the other workers.",
            ),
        ] = False,
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
        from celery import signals

        from ..engine import utcnow
        from ..logs import configure_logging
        from ..runtime.worker import SweeperThread
        from ..settings import load_settings
        from ..store import upgrade_database
        from ..system import System, install_worker_logging
        from .outage_log import OutageLog
        from .worker_options import WorkerOptions, check_log_level, check_node_name

        options = WorkerOptions.parse(
            concurrency=concurrency,
            pool=pool,
            autoscale=autoscale,
            max_tasks_per_child=max_tasks_per_child,
            max_memory_per_child=max_memory_per_child,
            gossip=gossip,
            mingle=mingle,
        )
        node = check_node_name(hostname)  # %h, %n and %d expand as the celery command does
        overrides = {"log_level": check_log_level(loglevel)} if loglevel else {}
        settings = load_settings(**overrides)
        install_worker_logging(settings)
        configure_logging(settings.log_level, settings.log_format)
        outages = OutageLog(settings)
        outages.install()
        system = System(settings, migrate=False)
        if not settings.embedded:
            _migrate_when_reachable(settings, outages)
            # Retry the broker for as long as it takes, with Celery's backoff (2 s more per
            # attempt, up to 30 s); the default gives up after 100 attempts.
            system.celery.conf.broker_connection_max_retries = None
        else:
            upgrade_database(settings.database_url)
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
        celery_worker = system.celery.Worker(
            queues=selected,
            hostname=node,
            loglevel=settings.log_level,
            redirect_stdouts=False,
            task_events=task_events,
            **options.worker_kwargs(),
        )
        outages.quiet_celery()
        celery_worker.start()


def _migrate_when_reachable(settings: Settings, outages: OutageLog) -> None:
    """Bring the saga log up to date, waiting with backoff while its database is unreachable.

    A worker outlives outages of its dependencies rather than exiting: it says once that the
    database is unreachable and once that it answers, and then starts consuming. A server
    that answers and refuses (a wrong password, a database it does not have) is an error.
    """
    from ..outages import DATABASE, unreachable
    from ..store import upgrade_database

    delay = 1.0
    while True:
        try:
            upgrade_database(settings.database_url)
        except Exception as exc:
            outage = unreachable(exc, settings)
            if outage is None:
                raise
            if outage.refused:
                raise outage from None  # a wrong password does not mend by waiting: exit 3
            if outages.down(outage):
                logger.warning("%s; retrying until it answers", outage)
            time.sleep(delay)
            delay = min(2 * delay, MAX_DELAY)
            continue
        recovered = outages.up(DATABASE)
        if recovered is not None:
            logger.warning("%s", recovered.ended())
        return


def _run_embedded(system: System) -> None:
    """Embedded mode: an in-process worker and sweeper until SIGINT/SIGTERM."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    system.start_embedded()
    typer.echo("embedded worker running (SQLite + in-process broker); Ctrl-C to stop")
    stop.wait()
    system.close()
