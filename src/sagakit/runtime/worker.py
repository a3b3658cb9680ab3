"""Worker processes: the sweeper thread, what a worker holds, the embedded worker."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from celery.worker import WorkController

from ..messages import TIMEOUT_HEADER
from ..store.recovery import Held

if TYPE_CHECKING:
    from ..sweeper import Sweeper

logger = logging.getLogger(__name__)


def holdings() -> tuple[Held, ...]:
    """The tasks this worker process runs and holds (Celery's own bookkeeping).

    In a prefork worker, the main process knows what each pool process runs: this is what
    the heartbeat reports, so a dead worker's tasks are known to be lost at once.
    """
    from celery.worker import state

    for _ in range(5):  # the consumer thread may change the sets while we read them
        try:
            reserved = list(state.reserved_requests)
            active = list(state.active_requests)
            break
        except RuntimeError:
            continue
    else:
        return ()
    running = {r.id: r for r in active if r.id}
    held = [
        Held(r.id, getattr(r, "time_start", None) or time.time(), _soft_limit(r))
        for r in running.values()
    ]
    held.extend(Held(r.id) for r in reserved if r.id and r.id not in running)
    return tuple(held)


def _soft_limit(request: Any) -> float | None:
    """The step's timeout: sagakit's header, else Celery's soft (or hard) time limit."""
    headers = getattr(request, "request_dict", None) or {}
    value = headers.get(TIMEOUT_HEADER)
    if value is None:
        limits = getattr(request, "time_limits", None) or (None, None)
        hard, soft = [*list(limits), None, None][:2]
        value = soft or hard
    return float(value) if value else None


class SweeperThread:
    """Every `interval` seconds: beat for this worker and (unless told not to) sweep."""

    def __init__(
        self, sweeper: Callable[[], Sweeper], interval: float, *, sweep: bool = True
    ) -> None:
        self._sweeper = sweeper
        self._interval = interval
        self._sweep = sweep
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False

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
            sweeper = self._sweeper()
            if not self._sweep:
                sweeper.beat()
                report = None
            else:
                report = sweeper.sweep()
        except Exception as exc:
            # Say so once, not once per interval, and again when it recovers.
            if not self._failing:
                logger.warning("sweep failed (%s); retrying every %ss", exc, self._interval)
            self._failing = True
            return
        if self._failing:
            logger.warning("sweeps work again")
            self._failing = False
        if report:
            logger.info(
                "sweep",
                extra={
                    "sent": report.sent,
                    "resent": report.resent,
                    "timed_out": report.timed_out,
                    "lost": report.lost,
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
        sweeper: Callable[[], Sweeper],
        queues: list[str],
        *,
        concurrency: int = 4,
        sweep_interval: float = 1.0,
    ) -> None:
        self.app = app
        self.queues = sorted(set(queues))
        self.concurrency = concurrency
        self.sweeper = SweeperThread(sweeper, sweep_interval)
        self._get_sweeper = sweeper
        self._worker: _ThreadWorker | None = None
        self._thread: threading.Thread | None = None

    @property
    def hostname(self) -> str:
        """This worker's node name (its heartbeat's name)."""
        return f"embedded-{id(self):x}@{socket.gethostname()}"

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
            hostname=self.hostname,
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
        try:
            self._get_sweeper().forget()
        except Exception as exc:
            logger.warning("could not remove the embedded worker's heartbeat: %s", exc)

    def __enter__(self) -> EmbeddedWorker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
