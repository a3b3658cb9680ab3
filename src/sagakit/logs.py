"""Logging with the saga's id, step and attempt on every record inside a saga."""

from __future__ import annotations

import json
import logging
import logging.config
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from types import MappingProxyType
from typing import Any

from .messages import parse_task_id

_context: ContextVar[Mapping[str, Any]] = ContextVar(
    "sagakit_log_context", default=MappingProxyType({})
)
_FIELDS = ("saga_id", "step", "attempt")


@contextmanager
def saga_context(saga_id: str, **fields: Any) -> Iterator[None]:
    """Attach `saga_id` (and fields such as step, attempt) to every log record inside."""
    token = _context.set({**_context.get(), "saga_id": saga_id, **fields})
    try:
        yield
    finally:
        _context.reset(token)


def _from_task(record: logging.LogRecord) -> Mapping[str, Any]:
    """Saga id, step and attempt of the task a Celery log line is about (its task id).

    Celery passes the task id as ``extra={"data": {"id": ...}}`` (received, succeeded,
    raised) or only as an argument of the message (``Soft time limit (%ss) exceeded for
    %s[%s]``, ``Task %s[%s] retry: %s``): the first sagakit task id found says which.
    """
    data = getattr(record, "data", None)
    candidates: list[Any] = [
        data.get("id") if isinstance(data, Mapping) else getattr(record, "task_id", None)
    ]
    if isinstance(record.args, tuple):
        candidates.extend(record.args)
    for task_id in candidates:
        parsed = parse_task_id(task_id) if isinstance(task_id, str) else None
        if parsed is not None:
            return {"saga_id": parsed.saga_id, "step": parsed.step, "attempt": parsed.attempt}
    return {}


class ContextFilter(logging.Filter):
    """Copy the saga context onto each record (with '-' outside a saga).

    Celery's own lines (received, succeeded, raised, soft time limit) are logged outside
    any saga context; their task id says which saga, step and attempt they are about.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        context = _context.get() or _from_task(record)
        for key in _FIELDS:
            if not hasattr(record, key):
                setattr(record, key, context.get(key, "-"))
        return True


_STANDARD = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}
"""Attributes every LogRecord has: the rest were given as ``extra``."""
_SCALARS = (str, int, float, bool)


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with the scalar ``extra`` fields of the record.

    Structured extras (Celery's ``data``, which repeats the task's arguments and
    traceback) are left out: the message already says what they hold.
    """

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "at": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in _FIELDS and isinstance(value, _SCALARS):
                data.setdefault(key, value)
        for key in _FIELDS:
            value = getattr(record, key, "-")
            if value != "-":
                data[key] = value
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str)


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(saga_id)s %(step)s #%(attempt)s] %(message)s"


def configure_logging(level: str = "INFO", fmt: str = "text") -> None:
    """Install the saga-aware handler on the root logger."""
    formatter: dict[str, Any] = {"()": JsonFormatter} if fmt == "json" else {"format": TEXT_FORMAT}
    logging.config.dictConfig(
        {
            "version": 1,
            "disable_existing_loggers": False,
            "filters": {"saga": {"()": ContextFilter}},
            "formatters": {"default": formatter},
            "handlers": {
                "stderr": {
                    "class": "logging.StreamHandler",
                    "filters": ["saga"],
                    "formatter": "default",
                }
            },
            "root": {"handlers": ["stderr"], "level": level.upper()},
        }
    )
