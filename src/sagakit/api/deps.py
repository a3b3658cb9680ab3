"""Request dependencies: the System, and the bearer token on mutating routes."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status

from ..system import System


def get_system(request: Request) -> System:
    """The System built once by the app factory."""
    system: System = request.app.state.system
    return system


SystemDep = Annotated[System, Depends(get_system)]


def require_token(request: Request, system: SystemDep) -> None:
    """Require ``Authorization: Bearer $SAGAKIT_API_TOKEN`` when that setting is set."""
    expected = system.settings.api_token
    if not expected:
        return
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not secrets.compare_digest(given.strip(), expected):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            detail="missing or wrong bearer token (Authorization: Bearer $SAGAKIT_API_TOKEN)",
            headers={"WWW-Authenticate": "Bearer"},
        )
