"""sagakit errors -> HTTP statuses, in exactly one table.

An unreachable database or broker is 503 with the usual problem body, whichever driver
raised it (`sagakit.outages` tells them apart from other errors, which stay 500); the next
request tries again, so the API recovers by itself when the dependency is back.
"""

from __future__ import annotations

from collections.abc import Sequence

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from ..choreography.bus import DeadLetterNotFound
from ..core.errors import (
    DefinitionError,
    InvalidInput,
    InvalidTransition,
    SagaError,
    SagaNotFound,
    UnknownSagaType,
    VersionNotDeployed,
)
from ..core.inputs import MAX_DEPTH
from ..outages import Unreachable, unreachable

RETRY_AFTER = "5"
"""Seconds a client is asked to wait after a 503 (dependency unreachable)."""


class AuthError(SagaError):
    """The request's bearer token does not allow it."""

    field = "header.Authorization"


class Unauthorized(AuthError):
    """No bearer token, or one that is neither the API token nor the read token."""


class Forbidden(AuthError):
    """A valid token that does not allow this request (the read token on a write)."""


HTTP_STATUS: dict[type[SagaError], int] = {
    Unauthorized: 401,
    Forbidden: 403,
    SagaNotFound: 404,
    VersionNotDeployed: 409,
    DeadLetterNotFound: 404,
    UnknownSagaType: 422,
    InvalidInput: 422,
    InvalidTransition: 409,
    DefinitionError: 500,
    Unreachable: 503,
}


def status_for(exc: SagaError) -> int:
    """The status of the most specific matching class (400 for anything else of ours)."""
    return next((code for kind, code in HTTP_STATUS.items() if isinstance(exc, kind)), 400)


def _field(loc: Sequence[object]) -> str:
    """A body field by its path in the JSON body (``input.robots``, as the engine names it)."""
    if len(loc) > 1 and loc[0] == "body" and isinstance(loc[1], str):
        loc = loc[1:]
    return ".".join(str(part) for part in loc)


def install(app: FastAPI) -> None:
    """Register the handlers on `app`."""

    async def saga_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, SagaError)
        body: dict[str, object] = {"detail": str(exc)}
        headers = {}
        if isinstance(exc, InvalidInput | AuthError):
            body["field"] = exc.field
        elif isinstance(exc, VersionNotDeployed):
            body["field"] = "version"
        elif isinstance(exc, UnknownSagaType):
            body["field"] = "type"
        if isinstance(exc, Unauthorized):
            headers["WWW-Authenticate"] = "Bearer"
        if isinstance(exc, Unreachable):
            body["field"] = None
            headers["Retry-After"] = RETRY_AFTER
        return JSONResponse(body, status_code=status_for(exc), headers=headers)

    async def driver_error(request: Request, exc: Exception) -> JSONResponse:
        system = getattr(request.app.state, "system", None)
        outage = unreachable(exc, getattr(system, "settings", None))
        if outage is None:
            raise exc  # not about reaching a dependency: a 500, logged with its traceback
        return await saga_error(request, outage)

    async def validation_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        problems = [
            {"field": _field(e.get("loc", ())), "reason": e.get("msg", "")} for e in exc.errors()
        ]
        first = problems[0] if problems else {"field": "request", "reason": "invalid"}
        return JSONResponse(
            {
                "detail": f"{first['field']}: {first['reason']}",
                "field": first["field"],
                "errors": problems,
            },
            status_code=422,
        )

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        why = _unreadable(exc)
        if why is None:
            return await http_exception_handler(request, exc)
        return JSONResponse({"detail": f"body: {why}", "field": "body"}, status_code=400)

    app.add_exception_handler(SagaError, saga_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    for error_type in driver_errors():
        app.add_exception_handler(error_type, driver_error)


def _unreadable(exc: HTTPException) -> str | None:
    """Why FastAPI could not read a request's body (it answers a bare 400 "There was an
    error parsing the body"), or None for any other HTTP error."""
    if exc.status_code != 400:
        return None
    cause = exc.__cause__
    if isinstance(cause, RecursionError):  # the JSON parser's own limit, about 1000 levels
        return f"JSON nested too deeply to read (input may nest up to {MAX_DEPTH} levels)"
    if isinstance(cause, UnicodeDecodeError):
        return "not UTF-8"
    return None


def driver_errors() -> tuple[type[Exception], ...]:
    """The drivers' exception classes that may say a dependency is unreachable."""
    import sqlite3

    import kombu.exceptions
    import psycopg
    import redis.exceptions
    import sqlalchemy.exc

    return (
        sqlalchemy.exc.OperationalError,
        sqlalchemy.exc.InterfaceError,
        # The read side and the hot path run on the drivers' own connections, whose errors
        # SQLAlchemy does not wrap.
        psycopg.OperationalError,
        psycopg.InterfaceError,
        sqlite3.OperationalError,
        redis.exceptions.ConnectionError,
        redis.exceptions.TimeoutError,
        kombu.exceptions.OperationalError,
        ConnectionError,
        TimeoutError,
    )
