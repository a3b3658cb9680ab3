"""A worker's log through an outage: one line when a dependency stops answering, one when it
answers again.

Without this, a worker whose broker is down logs Celery's connection error (three lines) on
every retry, and one whose database is down logs the driver's message with its SQL, once per
part of the worker that noticed: the sweeper, the dispatcher, each task. Here every record
that carries an error of an unreachable dependency (see `sagakit.outages`) is told once per
outage as one line, naming the dependency and what to check, and the rest are dropped until
it answers again: for the broker when Celery's consumer reconnects, for the database when
the sweeper's next sweep works. Those two are the parts that notice an outage lasting: an
error the step tasks or the dispatcher meet while neither has noticed one is said as it is,
in one line each. Retrying is left to what already retries (Celery's consumer,
with backoff; the sweeper, every interval).
"""

from __future__ import annotations

import logging
import threading
import time
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..outages import BROKER, DATABASE, Unreachable, unreachable

if TYPE_CHECKING:
    from ..settings import Settings

CONSUMER = "celery.worker.consumer.consumer"
CONNECTION = "celery.worker.consumer.connection"
SWEEPER = "sagakit.runtime.worker"

LOGGERS = (
    CONSUMER,
    CONNECTION,
    "celery.app.trace",
    "celery.worker.heartbeat",
    "celery.events.dispatcher",
    SWEEPER,
    "sagakit.runtime.dispatch",
    "sagakit.runtime.tasks",
    "sagakit.engine",
    "sagakit.sweeper",
)
"""Where the worker's parts log (a logger's filter sees only the records made on it)."""
BROKER_LOGGERS = frozenset(
    {
        CONSUMER,
        CONNECTION,
        "celery.worker.heartbeat",
        "celery.events.dispatcher",
        "sagakit.runtime.dispatch",
    }
)
"""Loggers whose Redis errors are the broker's, whatever address they give."""


@dataclass
class Outage:
    """One dependency out of reach: since when, and how often it was noticed since."""

    error: Unreachable
    since: float = field(default_factory=time.monotonic)
    repeats: int = 0
    """Records of it dropped after the first (Celery logs each failed reconnection)."""

    def ended(self) -> str:
        """The line that says it answers again."""
        dependency = self.error.dependency
        seconds = time.monotonic() - self.since
        line = f"{dependency.role} at {dependency.address} answers again after {seconds:.1f}s"
        return f"{line} ({self.repeats} repeated errors not logged)" if self.repeats else line


class OutageLog(logging.Filter):
    """Says once that a dependency is out of reach, and once that it answers again."""

    def __init__(self, settings: Settings) -> None:
        super().__init__()
        self.settings = settings
        self._down: dict[str, Outage] = {}
        self._lock = threading.Lock()

    def install(self) -> None:
        """Filter the worker's loggers."""
        for name in LOGGERS:
            logging.getLogger(name).addFilter(self)

    @staticmethod
    def quiet_celery() -> None:
        """Silence Celery's notice about a setting sagakit chose, repeated on every outage.

        sagakit sets ``worker_cancel_long_running_tasks_on_connection_loss=False`` on
        purpose (runtime/app.py). Call this after the worker is built: Celery's logging
        setup puts its own "always show" filter for the notice's category first.
        """
        warnings.filterwarnings(
            "ignore", message=r"(?s).*worker_cancel_long_running_tasks_on_connection_loss"
        )

    def down(self, error: Unreachable, *, lasting: bool = True) -> bool:
        """Note the outage; True the first time (the caller then says so).

        Only a part of the worker that will also tell the recovery (`lasting`) opens an
        outage: the consumer for the broker, the sweeper (or the wait at start) for the
        database. Anything else that meets an outage nobody has opened is said as it is.
        """
        kind = _kind(error)
        if kind is None:
            return True  # the event stream is best effort and says nothing when it is back
        with self._lock:
            outage = self._down.get(kind)
            if outage is not None:
                outage.repeats += 1
                return False
            if lasting:
                self._down[kind] = Outage(error)
            return True

    def up(self, kind: str) -> Outage | None:
        """Note that `kind` (`BROKER` or `DATABASE`) answers again; the outage it ends."""
        with self._lock:
            return self._down.pop(kind, None)

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite or drop `record`; True keeps it."""
        recovered = self._recovery(record)
        if recovered is not None:
            _reword(record, logging.WARNING, recovered.ended())
            return True
        error = self._outage(record)
        if error is None:
            # Celery's consumer tells its reconnection steps at INFO; the outage was said.
            return not (record.name == CONSUMER and record.levelno <= logging.INFO and self._down)
        lasting = record.name in (CONSUMER, CONNECTION, SWEEPER)
        if not self.down(error, lasting=lasting):
            return False
        _reword(
            record,
            logging.WARNING,
            f"{error}; retrying until it answers" if lasting else str(error),
        )
        return True

    def _recovery(self, record: logging.LogRecord) -> Outage | None:
        if record.name == CONNECTION and record.msg == "Connected to %s":
            return self.up(BROKER)
        if record.name == SWEEPER and record.msg == "sweeps work again":
            return self.up(DATABASE)
        return None

    def _outage(self, record: logging.LogRecord) -> Unreachable | None:
        kind = BROKER if record.name in BROKER_LOGGERS else None
        for error in _errors(record):
            outage = unreachable(error, self.settings, kind=kind)
            if outage is not None:
                return outage
        return None


def _errors(record: logging.LogRecord) -> list[BaseException]:
    args: Any = record.args
    values = list(args.values()) if isinstance(args, dict) else list(args or ())
    if record.exc_info and record.exc_info[1] is not None:
        values.append(record.exc_info[1])
    return [value for value in values if isinstance(value, BaseException)]


def _kind(outage: Unreachable) -> str | None:
    """`BROKER` or `DATABASE`, whose recovery the log sees; None for anything else."""
    setting = outage.dependency.setting
    if setting == "SAGAKIT_BROKER_URL":
        return BROKER
    return DATABASE if setting in ("SAGAKIT_DATABASE_URL", "its database URL") else None


def _reword(record: logging.LogRecord, level: int, message: str) -> None:
    record.msg, record.args = "%s", (message,)
    record.exc_info, record.exc_text = None, None
    record.levelno, record.levelname = level, logging.getLevelName(level)
