"""Request dependencies: the System, and the bearer tokens that guard the routes."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from ..system import System
from .errors import Forbidden, Unauthorized

READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
"""Requests the read token allows; every other method writes."""

bearer = HTTPBearer(
    scheme_name="bearer",
    description="`SAGAKIT_API_TOKEN`, or `SAGAKIT_API_READ_TOKEN` for GET routes.",
    auto_error=False,  # require_token answers, with sagakit's problem body
)


def get_system(request: Request) -> System:
    """The System built once by the app factory."""
    system: System = request.app.state.system
    return system


SystemDep = Annotated[System, Depends(get_system)]
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


def _same(given: str, expected: str) -> bool:
    # Bytes: compare_digest refuses str with non-ASCII characters, which a header can carry.
    return secrets.compare_digest(given.encode(), expected.encode())


def require_token(request: Request, system: SystemDep, credentials: Credentials) -> None:
    """Let the request through with ``SAGAKIT_API_TOKEN``, or the read token on a read.

    The app factory adds this to a router only when ``SAGAKIT_API_TOKEN`` is set, so the
    OpenAPI document declares the bearer scheme exactly on the routes that need it.

    Raises:
        Unauthorized: no bearer token, or a wrong one.
        Forbidden: the read token (``SAGAKIT_API_READ_TOKEN``) on a request that writes.
    """
    settings = system.settings
    if not settings.api_token:
        return
    given = credentials.credentials.strip() if credentials else ""
    if given and _same(given, settings.api_token):
        return
    if given and settings.api_read_token and _same(given, settings.api_read_token):
        if request.method in READ_METHODS:
            return
        raise Forbidden(
            f"the read-only token cannot {request.method} {request.url.path}: "
            "writes need Authorization: Bearer $SAGAKIT_API_TOKEN"
        )
    expected = "$SAGAKIT_API_TOKEN"
    if settings.api_read_token and request.method in READ_METHODS:
        expected += " or $SAGAKIT_API_READ_TOKEN"
    raise Unauthorized(f"missing or wrong bearer token (Authorization: Bearer {expected})")
