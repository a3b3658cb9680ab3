"""`adopt(app)`: a service's own Celery app runs its existing, unchanged tasks as saga steps.

One line in the module that makes the app (the task modules stay as they are)::

    app = Celery("shop", broker=...)
    sagakit.adopt(app)

In a worker that can reach the saga log (``SAGAKIT_DATABASE_URL`` is set), step outcomes
are written there as a ``@saga_task``'s are, with the saga definitions of
``SAGAKIT_IMPORTS``, and the worker beats a heartbeat as a ``sagakit worker`` does (what it
runs and holds, the definitions it can advance: the sweepers of sagakit's workers time out
its overrun attempts and take over from it when it dies); elsewhere outcomes go to the
``sagakit`` queue, where a sagakit worker records them. How the outcome is learnt:
`runtime.adopted`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from celery import signals

from .environ import DATABASE_URL
from .runtime.adopted import install
from .runtime.app import bind_engine, bind_tracing, tracing_for
from .runtime.worker import SweeperThread
from .settings import Settings, load_settings
from .sweeper import Sweeper
from .system import System


def adopt(app: Any, *, saga_log: bool | None = None, settings: Settings | None = None) -> None:
    """Let `app`'s workers run existing tasks as saga steps and report their outcomes.

    `saga_log`: write outcomes to the saga log (default: when `settings` are given or
    ``SAGAKIT_DATABASE_URL`` or ``POSTGRES_HOST`` is set); else send them to the sagakit
    queue. The app's ``task_routes`` also route the steps that name no queue.
    """
    install()
    _trace(app, settings)
    if getattr(app, "sagakit_message_key", None) is None:
        key = settings.message_key if settings is not None else None
        app.sagakit_message_key = key or os.environ.get("SAGAKIT_MESSAGE_KEY") or None
    if saga_log is None:
        saga_log = settings is not None or any(
            k.upper() in (DATABASE_URL, "POSTGRES_HOST") for k in os.environ
        )
    if not saga_log:
        return
    built = settings or load_settings()
    holder: list[System] = []

    def system() -> System:
        # Built on first use, in the worker: the saga modules may import this app's module.
        if not holder:
            routes = app.conf.task_routes
            holder.append(System(built, migrate=False, routes=[routes] if routes else []))
        return holder[0]

    bind_engine(app, lambda: system().process.engine, record_patience=built.record_patience)
    _beat(system, built.sweep_interval)


def _beat(system: Callable[[], System], interval: float) -> None:
    """Beat this worker's heartbeat while it runs (beats only: sagakit's workers sweep)."""
    born = datetime.now(UTC)  # before any task can run: a restart of this name is told by it
    held: dict[str, Sweeper] = {}
    thread = SweeperThread(lambda: held["sweeper"], interval, sweep=False)

    def start(sender: Any = None, **_: Any) -> None:
        held["sweeper"] = system().sweeper(getattr(sender, "hostname", None), born=born)
        thread.start()

    def stop(**_: Any) -> None:
        thread.stop()
        if "sweeper" in held:
            with contextlib.suppress(Exception):
                held["sweeper"].forget()

    signals.worker_ready.connect(start, weak=False)
    signals.worker_shutdown.connect(stop, weak=False)


def _trace(app: Any, settings: Settings | None) -> None:
    """With ``SAGAKIT_TRACING``, Celery's span of each existing task's attempt gets the
    attempt's attributes (`tracing.spans.Tracing.existing`); the SDK is set up as in a
    sagakit process unless the app set up its own before calling `adopt`."""
    wanted = os.environ.get("SAGAKIT_TRACING", "").strip().lower() in ("1", "true", "yes", "on")
    if (settings.tracing if settings is not None else wanted) and tracing_for(app) is None:
        from .tracing.setup import install as install_tracing
        from .tracing.spans import Tracing

        install_tracing()
        bind_tracing(app, Tracing())
