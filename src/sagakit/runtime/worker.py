"""Worker processes: the sweeper thread, the embedded in-process worker, `sagakit worker`."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from celery.worker import WorkController

if TYPE_CHECKING:
    from ..engine import Engine, Heartbeat

logger = logging.getLogger(__name__)


class Sweeper:
    """Every `interval` seconds: beat for this worker and (unless told not to) sweep."""

    def __init__(
        self,
        engine: Callable[[], Engine],
        interval: float,
        heartbeat: Heartbeat | None = None,
        *,
        sweep: bool = True,
    ) -> None:
        self._engine = engine
        self._interval = interval
        self._sweep = sweep
        self.heartbeat = heartbeat
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start sweeping in the background."""
        self._thread = threading.Thread(target=self._run, name="sagakit-sweeper", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop and wait for the current sweep to finish."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        # The first beat goes out at once: a worker killed in its first interval must be
        # known to have existed.
        while True:
            self._once()
            if self._stop.wait(self._interval):
                return

    def _once(self) -> None:
        try:
            if not self._sweep:  # heartbeat only
                if self.heartbeat is not None:
                    self._engine().beat(self.heartbeat)
                return
            report = self._engine().sweep(heartbeat=self.heartbeat)
        except Exception:
            logger.warning("sweep failed; will try again", exc_info=True)
            return
        if report.resent or report.timed_out or report.deadlines:
            logger.info(
                "sweep",
                extra={
                    "resent": report.resent,
                    "timed_out": report.timed_out,
                    "deadlines": report.deadlines,
                },
            )


class _ThreadWorker(WorkController):  # type: ignore[misc]
    """A real Celery worker that signals when its consumer is ready."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.ready = threading.Event()
        super().__init__(*args, **kwargs)

    def on_consumer_ready(self, consumer: Any) -> None:
        self.ready.set()


class EmbeddedWorker:
    """A real Celery worker (thread pool) running inside this process, plus a sweeper.

    It is what the embedded default uses: with the in-process broker, `sagakit demo` and
    the Python API need no services. It is not eager mode: messages go through the broker.
    """

    def __init__(
        self,
        app: Any,
        engine: Callable[[], Engine],
        queues: Iterable[str],
        *,
        concurrency: int = 4,
        sweep_interval: float = 1.0,
    ) -> None:
        self.app = app
        self.queues = sorted(set(queues))
        self.concurrency = concurrency
        self.sweeper = Sweeper(engine, sweep_interval)
        self._worker: _ThreadWorker | None = None
        self._thread: threading.Thread | None = None

    def start(self, timeout: float = 30.0) -> None:
        """Start consuming; returns once the worker is ready. Raises TimeoutError."""
        self.app.finalize()
        # The thread pool traces tasks through the current app: it must be ours.
        self.app.set_current()
        self.app.set_default()
        self._worker = _ThreadWorker(
            app=self.app,
            concurrency=self.concurrency,
            pool="threads",
            queues=self.queues,
            hostname=f"embedded@{_hostname()}",
            loglevel="WARNING",
            without_heartbeat=True,
            without_mingle=True,
            without_gossip=True,
            ready_callback=None,
        )
        self._thread = threading.Thread(
            target=self._worker.start, name="sagakit-worker", daemon=True
        )
        self._thread.start()
        if not self._worker.ready.wait(timeout):
            raise TimeoutError("embedded worker did not start")
        self.sweeper.start()

    def stop(self, timeout: float = 15.0) -> None:
        """Stop the sweeper and the worker (waits for running tasks)."""
        self.sweeper.stop()
        if self._worker is not None:
            self._worker.stop(in_sighandler=False)
        if self._thread is not None:
            self._thread.join(timeout)

    def __enter__(self) -> EmbeddedWorker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _hostname() -> str:
    import socket

    return socket.gethostname()
