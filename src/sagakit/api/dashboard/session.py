"""Who is looking at the dashboard, and what they may do.

The dashboard is a browser's view of the same API, guarded by the same tokens. Signing in
(``/login``) checks the token once and sets an HttpOnly, ``SameSite=Strict`` cookie holding
a MAC of the role under the token (never the token itself): changing the token signs
everyone out. With ``SAGAKIT_API_TOKEN`` the pages need a session; without it they are open,
as the API is, but nothing can be changed from a browser (there is nobody to hold
responsible). Every form that changes something carries a CSRF token (a MAC of the session)
and is refused when the browser says it comes from another origin.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

from fastapi import Request

from ...settings import Settings
from ..errors import Forbidden

SESSION_COOKIE = "sagakit_session"
OPERATOR_COOKIE = "sagakit_operator"
Role = Literal["write", "read"]


def _mac(secret: str, message: str) -> str:
    return hmac.new(secret.encode(), message.encode(), hashlib.sha256).hexdigest()


def session_value(settings: Settings, role: Role) -> str:
    """The cookie value of a session with `role` (the token must be set)."""
    assert settings.api_token
    return f"{role}.{_mac(settings.api_token, f'sagakit-dashboard:{role}')}"


def role_for(settings: Settings, token: str) -> Role | None:
    """The role a token signs in as, or None for a wrong one."""
    given = token.strip().encode()
    if settings.api_token and hmac.compare_digest(given, settings.api_token.encode()):
        return "write"
    if settings.api_read_token and hmac.compare_digest(given, settings.api_read_token.encode()):
        return "read"
    return None


@dataclass(frozen=True, slots=True)
class Viewer:
    """The person behind a request: may they read, may they act, and if not, why."""

    can_read: bool
    can_write: bool
    why_not: str
    """Why the buttons that change sagas are disabled ('' when they are not)."""
    signed_in: bool
    operator: str
    csrf: str


def viewer(request: Request, settings: Settings) -> Viewer:
    """Who sent `request`, from its session cookie."""
    operator = (request.cookies.get(OPERATOR_COOKIE) or "").strip()[:80] or "operator"
    if not settings.api_token:
        why = "set SAGAKIT_API_TOKEN on the server and sign in to act on sagas"
        return Viewer(True, False, why, False, operator, "")
    cookie = request.cookies.get(SESSION_COOKIE, "")
    for role in ("write", "read"):
        if role == "read" and not settings.api_read_token:
            continue
        if hmac.compare_digest(cookie.encode(), session_value(settings, role).encode()):
            csrf = _mac(settings.api_token, f"csrf:{cookie}")[:32]
            if role == "write":
                return Viewer(True, True, "", True, operator, csrf)
            why = "signed in with the read-only token: sign in with SAGAKIT_API_TOKEN to act"
            return Viewer(True, False, why, True, operator, csrf)
    return Viewer(False, False, "sign in with SAGAKIT_API_TOKEN to act", False, operator, "")


def check_form(request: Request, who: Viewer, csrf: str) -> None:
    """Refuse a form that does not come from a dashboard page of this origin.

    Raises:
        Forbidden: not signed in with the write token, a cross-site request, or a missing
            or wrong CSRF token.
    """
    if not who.can_write:
        raise Forbidden(f"this action is disabled: {who.why_not}")
    origin = request.headers.get("origin") or request.headers.get("referer")
    if origin and urlsplit(origin).netloc != request.headers.get("host", ""):
        raise Forbidden("cross-site form refused: submit it from the dashboard's own pages")
    if not hmac.compare_digest(csrf.encode(), who.csrf.encode()):
        raise Forbidden("the form's CSRF token is missing or stale: reload the page")
