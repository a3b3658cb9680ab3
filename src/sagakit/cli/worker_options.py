"""`sagakit worker`'s Celery options: checked with Celery's meanings, passed to its Worker.

The options arrive as text and are checked here, before anything starts, so that a bad
value is a sagakit error naming the option (one line on stderr, exit status 2) rather than
click's usage box or a traceback from inside Celery.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from celery import concurrency
from celery.utils.nodenames import default_nodename, host_format
from celery.utils.sysinfo import is_auto_concurrency

from ..core.errors import SagaError

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL", "FATAL")


class OptionError(SagaError):
    """A command-line option has a value it cannot take."""

    def __init__(self, option: str, value: object, expected: str) -> None:
        super().__init__(f"{option}: {value!r} is not {expected}")


def check_log_level(value: str) -> str:
    """A logging level name in any case (celery worker -l)."""
    level = value.strip().upper()
    if level not in LOG_LEVELS:
        raise OptionError("-l/--loglevel", value, f"one of {', '.join(LOG_LEVELS)}")
    return level


def check_pool(value: str) -> str:
    """A Celery pool name whose implementation can be imported (celery worker -P)."""
    names = concurrency.get_available_pool_names()
    if value not in names:
        raise OptionError("-P/--pool", value, f"one of {', '.join(names)}")
    try:
        concurrency.get_implementation(value)
    except (ImportError, AttributeError, ValueError) as exc:
        raise OptionError("-P/--pool", value, f"a pool that can be loaded here ({exc})") from None
    return value


def check_concurrency(value: str) -> int | str:
    """Pool processes or threads: a non-negative integer (0: one per CPU) or auto."""
    if is_auto_concurrency(value.strip()):
        return "auto"
    try:
        number = int(value)
    except ValueError:
        number = -1
    if number < 0:
        raise OptionError("-c/--concurrency", value, "a non-negative integer or 'auto'")
    return number


def check_autoscale(value: str) -> tuple[int, int]:
    """MAX[,MIN] pool processes (celery worker --autoscale), as (max, min)."""
    try:
        numbers = [int(part) for part in value.split(",")]
    except ValueError:
        numbers = []
    if not 1 <= len(numbers) <= 2 or min(numbers) < 0 or max(numbers) < 1:
        raise OptionError("--autoscale", value, "MAX or MAX,MIN (integers, MAX at least 1)")
    high, low = sorted([*numbers, 0][:2], reverse=True)  # celery takes either order
    return high, low


def check_positive(option: str, value: str) -> int:
    """A whole number of at least 1."""
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise OptionError(option, value, "a positive integer")
    return number


def check_node_name(value: str | None) -> str:
    """This worker's node name, with %h, %n and %d expanded (default celery@%h)."""
    if value is not None and (not value.strip() or value.startswith("@")):
        raise OptionError("-n/--hostname", value, "a node name such as robots@%h")
    return str(host_format(default_nodename(value)))


@dataclass(frozen=True)
class WorkerOptions:
    """The checked options, as keyword arguments of Celery's ``app.Worker``."""

    concurrency: int | str
    pool: str
    autoscale: tuple[int, int] | None
    max_tasks_per_child: int | None
    max_memory_per_child: int | None
    gossip: bool
    mingle: bool

    @classmethod
    def parse(
        cls,
        *,
        concurrency: str,
        pool: str,
        autoscale: str | None,
        max_tasks_per_child: str | None,
        max_memory_per_child: str | None,
        gossip: bool,
        mingle: bool,
    ) -> WorkerOptions:
        """Check the command line's text values; raise `OptionError` on the first bad one."""
        return cls(
            concurrency=check_concurrency(concurrency),
            pool=check_pool(pool),
            autoscale=None if autoscale is None else check_autoscale(autoscale),
            max_tasks_per_child=None
            if max_tasks_per_child is None
            else check_positive("--max-tasks-per-child", max_tasks_per_child),
            max_memory_per_child=None
            if max_memory_per_child is None
            else check_positive("--max-memory-per-child", max_memory_per_child),
            gossip=gossip,
            mingle=mingle,
        )

    def worker_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``app.Worker`` (task events are left to Celery's settings)."""
        from ..runtime.pool import implementation

        return {
            "concurrency": self.concurrency,
            "pool": implementation(self.pool),  # prefork: sagakit's, which reaps at once
            "autoscale": self.autoscale,
            "max_tasks_per_child": self.max_tasks_per_child,
            "max_memory_per_child": self.max_memory_per_child,
            # sagakit's heartbeat table tells which workers are alive; gossip and mingle
            # would only add broker traffic at start-up and on every worker event.
            "without_gossip": not self.gossip,
            "without_mingle": not self.mingle,
        }
