"""A dependency that cannot be reached, told in one line: the one translation of driver errors.

The saga log's database, the broker and the event stream's Redis fail in each driver's own
words (SQLAlchemy and psycopg ``OperationalError``, redis-py ``ConnectionError``, kombu's
``OperationalError``, a bare ``OSError``) and at length. `unreachable` turns any of them into
an `Unreachable` error that names the dependency by its role and address (host:port, never
a password) and says what to check. The CLI prints it as one line and exits with
`EXIT_UNREACHABLE`; the API answers 503 with it; a worker logs it once per outage.

Nothing here imports a driver: an exception can only be one of a driver's if that driver
has been imported, so the checks look the classes up in ``sys.modules``.
"""

from __future__ import annotations

import errno
import os
import re
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from .core.errors import SagaError

if TYPE_CHECKING:
    from .settings import Settings

EXIT_UNREACHABLE = 3
"""Exit status of a command that could not reach the database or the broker."""

DEFAULT_PORTS = {"postgresql": 5432, "postgres": 5432, "redis": 6379, "rediss": 6379, "amqp": 5672}
SERVICES = {"postgresql": "PostgreSQL", "postgres": "PostgreSQL", "sqlite": "SQLite"}
BROKERS = {"redis": "Redis", "rediss": "Redis", "amqp": "RabbitMQ", "amqps": "RabbitMQ"}

DATABASE, BROKER, REDIS = "database", "broker", "redis"
"""The kinds of dependency an error can come from."""


@dataclass(frozen=True)
class Dependency:
    """Something sagakit connects to, as the user configured it."""

    role: str
    """How the user knows it: "the saga log's database", "the broker"."""
    address: str
    """host:port, or a file for SQLite (empty when unknown); never credentials."""
    setting: str
    """The variable that says where it is."""
    service: str
    """What must be running there: PostgreSQL, Redis."""


class Unreachable(SagaError):
    """A dependency cannot be reached, or refuses the connection."""

    def __init__(self, dependency: Dependency, reason: str) -> None:
        self.dependency = dependency
        self.reason = reason
        where = f" at {dependency.address}" if dependency.address else ""
        super().__init__(f"{dependency.role}{where} {_told(dependency, reason)}")

    @property
    def refused(self) -> bool:
        """The server answered and refused (a login or a database it does not have).

        Waiting does not mend that, unlike a server that is down or starting up.
        """
        return _refused_login(self.reason) or _missing_database(self.reason)


def _refused_login(reason: str) -> bool:
    return reason == "authentication failed" or reason.startswith(("role ", "user "))


def _missing_database(reason: str) -> bool:
    return reason.startswith("database ") and reason.endswith("does not exist")


def _told(dependency: Dependency, reason: str) -> str:
    """The rest of the sentence: what happened and what to check."""
    setting, service = dependency.setting, dependency.service
    if _refused_login(reason):
        return f"refused the connection ({reason}): check the user and password in {setting}"
    if _missing_database(reason):
        return f"refused the connection ({reason}): check {setting}"
    if reason == "host name not found":
        return f"is unreachable ({reason}): check the host in {setting}"
    if service == "SQLite":
        return f"cannot be opened ({reason}): check {setting} and that its directory exists"
    return f"is unreachable ({reason}): check {setting} and that {service} is running"


def address(url: str) -> str:
    """host:port of a service URL (the scheme's default port if none), or a SQLite file."""
    scheme, _, rest = url.partition("://")
    scheme = scheme.split("+", 1)[0].lower()
    if scheme == "sqlite":
        # sqlite:///relative.db, sqlite:////absolute.db, sqlite:// (in memory)
        path = rest[1:].split("?", 1)[0]
        return os.path.abspath(path) if path and path != ":memory:" else ":memory:"
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError:
        return "?"
    return f"{host or 'localhost'}:{port or DEFAULT_PORTS.get(scheme, '?')}"


def database(url: str) -> Dependency:
    """The saga log's database at `url`."""
    scheme = url.split("://", 1)[0].split("+", 1)[0].lower()
    return Dependency(
        "the saga log's database",
        address(url),
        "SAGAKIT_DATABASE_URL",
        SERVICES.get(scheme, "the database"),
    )


def broker(url: str) -> Dependency:
    """The Celery broker at `url`."""
    scheme = url.split("://", 1)[0].lower()
    return Dependency("the broker", address(url), "SAGAKIT_BROKER_URL", BROKERS.get(scheme, "it"))


def event_stream(url: str) -> Dependency:
    """The Redis holding the saga event stream, at `url`."""
    return Dependency("the event stream's Redis", address(url), "SAGAKIT_REDIS_URL", "Redis")


def unreachable(
    exc: BaseException, settings: Settings | None = None, *, kind: str | None = None
) -> Unreachable | None:
    """`exc` as an `Unreachable` error, or None when it does not say a dependency is out of reach.

    Args:
        exc: any exception; the driver error it wraps and its causes are looked at too.
        settings: where the database, the broker and Redis are configured, to name the
            dependency by its role ("the saga log's database") rather than as "a database".
        kind: what the caller was talking to (`DATABASE`, `BROKER`, `REDIS`), for errors
            that do not say it themselves (a bare ``OSError``), or to tell the broker from
            another Redis server.
    """
    if isinstance(exc, Unreachable):
        return exc
    for error in _chain(exc):
        found = _classify(error)
        if found is not None:
            if kind == BROKER and found.kind == REDIS:  # whatever address Redis gave
                found = _Found(BROKER, found.reason, found.where, found.service)
            return Unreachable(_dependency(found, settings), found.reason)
    if kind is not None:
        for error in _chain(exc):
            if _is_network_error(error):
                found = _Found(kind, _os_reason(error), None, "")
                return Unreachable(_dependency(found, settings), found.reason)
    return None


@dataclass(frozen=True)
class _Found:
    kind: str
    reason: str
    where: str | None
    """The address the error names, if it names one."""
    service: str


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """`exc`, the driver error SQLAlchemy wraps, and their causes (each once)."""
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo and len(seen) < 20:
        error = todo.pop(0)
        if id(error) in seen:
            continue
        seen.add(id(error))
        yield error
        for following in (getattr(error, "orig", None), error.__cause__, error.__context__):
            if isinstance(following, BaseException):
                todo.append(following)


def _classes(module: str, *names: str) -> tuple[type[BaseException], ...]:
    loaded = sys.modules.get(module)
    if loaded is None:
        return ()
    return tuple(cls for name in names if isinstance(cls := getattr(loaded, name, None), type))


# psycopg's SQLSTATEs of a connection that failed or was cut (class 08), of a server shutting
# down or starting up (57P01-57P03), and of a refused login (class 28). Errors raised while
# connecting carry no SQLSTATE at all. Other OperationalErrors (a deadlock, a cancelled
# query) are not about reaching the server.
_CONNECTION_SQLSTATES = ("08", "57P01", "57P02", "57P03", "28")


def _classify(error: BaseException) -> _Found | None:
    """What `error` says is out of reach, if it is a connectivity error."""
    text = " ".join(str(error).split())
    if isinstance(error, _classes("psycopg", "OperationalError")):
        state = getattr(error, "sqlstate", None)
        if state is None or state.startswith(_CONNECTION_SQLSTATES):
            return _Found(DATABASE, _reason(text), _pg_address(text), "PostgreSQL")
        return None
    if isinstance(error, _classes("psycopg", "InterfaceError")):
        reason = _known_reason(text)  # also raised for a closed cursor: only a lost connection
        return None if reason is None else _Found(DATABASE, reason, None, "PostgreSQL")
    if isinstance(error, _classes("sqlite3", "OperationalError")):
        if "unable to open database file" in text:
            return _Found(DATABASE, "unable to open the database file", None, "SQLite")
        return None  # "database is locked", "no such table": not about reaching it
    if isinstance(error, _classes("sqlalchemy.exc", "DBAPIError")):
        orig = getattr(error, "orig", None)
        found = _classify(orig) if isinstance(orig, BaseException) else None
        if found is None and getattr(error, "connection_invalidated", False):
            found = _Found(DATABASE, "connection lost", None, "")
        return found
    if isinstance(error, _classes("redis.exceptions", "ConnectionError", "TimeoutError")):
        return _Found(REDIS, _reason(text), _redis_address(text), "Redis")
    if isinstance(error, _classes("kombu.exceptions", "OperationalError")):
        return _Found(BROKER, _reason(text), _redis_address(text), "")
    return None


def _dependency(found: _Found, settings: Settings | None) -> Dependency:
    """The configured dependency the error is about, else one described by its address."""
    candidates: list[Dependency] = []
    if settings is not None:
        if found.kind == DATABASE:
            candidates.append(database(settings.database_url))
        elif not settings.embedded and (
            found.kind == BROKER or settings.broker_url.startswith("redis")
        ):
            candidates.append(broker(settings.broker_url))
        if found.kind == REDIS and settings.redis_url:
            candidates.append(event_stream(settings.redis_url))
    for dependency in candidates:
        if found.service and found.service != dependency.service:
            continue  # a SQLite error while the saga log is on PostgreSQL: another database
        if found.kind == BROKER or found.where is None or _same(found.where, dependency.address):
            return dependency
    where = found.where or ""
    if found.kind == DATABASE:
        service = found.service or "the database server"
        return Dependency("a database", where, "its database URL", service)
    if found.kind == BROKER:
        return Dependency("the broker", where, "SAGAKIT_BROKER_URL", found.service or "it")
    return Dependency("a Redis server", where, "its Redis URL", "Redis")


def _same(where: str, address: str) -> bool:
    """Whether an address told by an error (host:port, or a host alone) is `address`."""
    return where == address if ":" in where else where == address.rsplit(":", 1)[0]


_PG_AT = re.compile(r'connection to server at "([^"]+)"(?: \([^)]*\))?, port (\d+)')
_PG_RESOLVE = re.compile(r"failed to resolve host '([^']+)'")
_REDIS_AT = re.compile(r"connecting to ([^\s:]+):(\d+)")


def _pg_address(text: str) -> str | None:
    if match := _PG_AT.search(text):
        return f"{match.group(1)}:{match.group(2)}"
    if match := _PG_RESOLVE.search(text):
        return match.group(1)
    return None


def _redis_address(text: str) -> str | None:
    if match := _REDIS_AT.search(text):
        return f"{match.group(1)}:{match.group(2)}"
    return None


_REASONS = (
    ("connection refused", "connection refused"),
    ("timeout", "timed out"),
    ("timed out", "timed out"),
    ("name or service not known", "host name not found"),
    ("failed to resolve host", "host name not found"),
    ("could not translate host name", "host name not found"),
    ("temporary failure in name resolution", "host name not found"),
    ("nodename nor servname", "host name not found"),
    ("authentication failed", "authentication failed"),
    ("invalid username-password", "authentication failed"),
    ("authentication required", "authentication failed"),
    ("wrongpass", "authentication failed"),
    ("terminating connection due to administrator command", "the server shut down"),
    ("the database system is shutting down", "the server is shutting down"),
    ("the database system is starting up", "the server is starting up"),
    ("server closed the connection", "connection lost"),
    ("connection reset", "connection lost"),
    ("connection is closed", "connection lost"),
    ("connection is lost", "connection lost"),
    ("closed by server", "connection lost"),
    ("connection closed", "connection lost"),
    ("no route to host", "no route to host"),
    ("network is unreachable", "network unreachable"),
)
_FATAL = re.compile(r"^(?:FATAL|ERROR):\s+")


def _known_reason(text: str) -> str | None:
    lowered = text.lower()
    return next((reason for phrase, reason in _REASONS if phrase in lowered), None)


def _reason(text: str) -> str:
    """A few words for what went wrong, from a driver's message."""
    known = _known_reason(text)
    if known is not None:
        return known
    # psycopg: "connection failed: connection to server at ..., port N failed: FATAL: <why>"
    why = _FATAL.sub("", text.rsplit("failed: ", 1)[-1].strip())
    why = why.split(" Is the server running", 1)[0].rstrip(". ")
    return (why[:1].lower() + why[1:])[:120] or "no answer"


_NETWORK_ERRNOS = frozenset(
    {
        errno.ECONNREFUSED,
        errno.ECONNRESET,
        errno.ECONNABORTED,
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
        errno.ETIMEDOUT,
        errno.EPIPE,
    }
)


def _is_network_error(error: BaseException) -> bool:
    if isinstance(error, ConnectionError | TimeoutError | socket.gaierror | socket.herror):
        return True
    return isinstance(error, OSError) and error.errno in _NETWORK_ERRNOS


def _os_reason(error: BaseException) -> str:
    if isinstance(error, TimeoutError):
        return "timed out"
    if isinstance(error, socket.gaierror):
        return "host name not found"
    if isinstance(error, OSError) and error.strerror:
        return error.strerror.lower()
    return _reason(str(error))
