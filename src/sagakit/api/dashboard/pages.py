"""The dashboard's pages: sagas, one saga, needs attention, health, and signing in.

Every page reads through `sagakit.queries` (the read side the API and the CLI use). A page
that cannot be read (no such saga, the database unreachable) is an HTML page that says so
in one line, with the status the API would answer.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from markupsafe import Markup

from ... import outages
from ...core.errors import InvalidInput, SagaError
from ...core.inputs import check_saga_id
from ...queries import STATUSES, summary_view
from ...runtime.dispatch import BrokerWatch
from ...store.overview import COUNT_CAP
from ...system import System
from ..deps import SystemDep
from ..errors import RETRY_AFTER, status_for
from . import graph, timeline
from .panels import Dashboard
from .session import OPERATOR_COOKIE, SESSION_COOKIE, Viewer, role_for, session_value, viewer

TEMPLATES = Path(__file__).parent / "templates"
RANGES = {"15m": timedelta(minutes=15), "1h": timedelta(hours=1), "24h": timedelta(days=1)}
RANGES["7d"] = timedelta(days=7)
PAGE_SIZE = 50
FLASH_COOKIE = "sagakit_flash"

templates = Jinja2Templates(directory=TEMPLATES)
router = APIRouter(include_in_schema=False)


def _when(value: str | datetime | None) -> Markup:
    """A time as the browser shows it in its own zone (UTC until the script runs)."""
    if value is None:
        return Markup('<span class="muted">—</span>')
    at = datetime.fromisoformat(value) if isinstance(value, str) else value
    utc = at.astimezone(UTC)
    return Markup('<time datetime="{}" title="{} UTC">{}</time>').format(
        utc.isoformat(),
        utc.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3],
        utc.strftime("%Y-%m-%d %H:%M:%S"),
    )


def _seconds(value: float | None) -> str:
    if value is None:
        return "—"
    if value < 1:
        return f"{value * 1000:.0f} ms"
    if value < 120:
        return f"{value:.1f} s"
    minutes, seconds = divmod(int(value), 60)
    return f"{minutes}m {seconds:02d}s" if minutes < 60 else f"{minutes // 60}h {minutes % 60:02d}m"


def _pretty(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, default=str, ensure_ascii=False)


ICONS = {
    "pending": "○",
    "running": "◐",
    "compensating": "↺",
    "completed": "✓",
    "compensated": "↩",
    "failed": "✕",
    "succeeded": "✓",
    "compensation_failed": "✕",
    "timed_out": "⌛",
    "scheduled": "…",
    "not reached": "·",
}
"""A shape beside every status word, so statuses read without colour."""
templates.env.filters.update(when=_when, seconds=_seconds, pretty=_pretty)
templates.env.globals["icons"] = ICONS


def dashboard_of(request: Request) -> Dashboard:
    found: Dashboard = request.app.state.dashboard
    return found


def render(
    request: Request, system: System, name: str, code: int = 200, **values: Any
) -> HTMLResponse:
    """A page, with what every page shows: who is looking, the notice of the last action."""
    who = values.pop("who", None) or viewer(request, system.settings)
    # A fragment (a live refresh) leaves the notice of the last action to the page.
    flash = None if name.startswith("_") else request.cookies.get(FLASH_COOKIE)
    response = templates.TemplateResponse(
        request,
        name,
        {"who": who, "flash": flash, "settings": system.settings, **values},
        status_code=code,
    )
    if flash:
        response.delete_cookie(FLASH_COOKIE, path="/")
    return response


def problem_page(request: Request, system: System, exc: Exception) -> HTMLResponse:
    """The page for an error a read raised: its one line, with the API's status."""
    if not isinstance(exc, SagaError):
        found = outages.unreachable(exc, system.settings)
        if found is None:
            raise exc
        exc = found
    status = status_for(exc)
    page = render(request, system, "problem.html", status, status=status, detail=str(exc))
    if status == 503:
        page.headers["Retry-After"] = RETRY_AFTER
    return page


def guarded(request: Request, system: System, page: Callable[[Viewer], Response]) -> Response:
    """Run `page` for a viewer who may read; else send them to sign in."""
    who = viewer(request, system.settings)
    if not who.can_read:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/login?{urlencode({'next': target})}", status_code=303)
    try:
        return page(who)
    except Exception as exc:
        return problem_page(request, system, exc)


def flower_url(system: System) -> str:
    settings = system.settings
    return (settings.flower_url or f"http://{settings.api_host}:{settings.flower_port}").rstrip("/")


def _on(system: System, view: dict[str, Any], stage: int) -> str:
    """The step a running saga is on (its stage's steps), or the one it failed at."""
    if view["failed_step"]:
        return str(view["failed_step"])
    saga = system.sagas.get(view["type"])
    if saga is None or view["status"] not in ("running", "pending") or stage < 0:
        return ""
    if stage >= len(saga.steps):
        return ""
    return ", ".join(s.name for s in saga.stage_steps(stage))


def _list_filters(request: Request) -> dict[str, str]:
    q = request.query_params
    keys = ("status", "type", "range", "search", "cursor")
    return {k: q[k].strip() for k in keys if q.get(k, "").strip()}


def _page_values(system: System, filters: dict[str, str]) -> dict[str, Any]:
    status = filters.get("status")
    if status and status not in STATUSES:
        raise InvalidInput("status", f"must be one of {', '.join(STATUSES)}")
    span = filters.get("range")
    if span and span not in RANGES:
        raise InvalidInput("range", f"must be one of {', '.join(RANGES)}")
    after = datetime.now(UTC) - RANGES[span] if span else None
    saga_type = filters.get("type")
    queries = system.queries
    views, following = queries.page(
        status=status,
        saga_type=saga_type,
        created_after=after,
        search=filters.get("search"),
        cursor=filters.get("cursor"),
        limit=PAGE_SIZE,
    )
    for view in views:
        view["on"] = _on(system, view, int(view.get("stage", -1)))
    counts = queries.counts(saga_type=saga_type, created_after=after)
    base = {k: v for k, v in filters.items() if k != "cursor"}
    total = sum(min(n, COUNT_CAP) for n in counts.values())
    capped = any(n > COUNT_CAP for n in counts.values())
    return {
        "sagas": views,
        "counts": {s: f"{COUNT_CAP}+" if n > COUNT_CAP else str(n) for s, n in counts.items()},
        "total": f"{total}+" if capped else str(total),
        "filters": filters,
        "status_links": {
            s: "/?" + urlencode({**{k: v for k, v in base.items() if k != "status"}, "status": s})
            for s in STATUSES
        },
        "all_link": "/?" + urlencode({k: v for k, v in base.items() if k != "status"}),
        "next_link": "/?" + urlencode({**base, "cursor": following}) if following else None,
        "first_link": "/?" + urlencode(base) if filters.get("cursor") else None,
        "types": sorted(system.sagas),
        "ranges": list(RANGES),
        "statuses": STATUSES,
    }


@router.get("/")
def sagas_page(request: Request, system: SystemDep) -> Response:
    """The newest sagas, filtered, with counts per status; it follows changes live."""

    def page(who: Viewer) -> Response:
        filters = _list_filters(request)
        try:
            values = _page_values(system, filters)
        except InvalidInput as exc:
            values = _page_values(system, {})
            values["problem"] = str(exc)
        if request.headers.get("x-fragment"):
            return render(request, system, "_results.html", who=who, **values)
        panels = dashboard_of(request).render("sagas", templates.env)
        return render(request, system, "sagas.html", who=who, panels=panels, **values)

    return guarded(request, system, page)


def saga_values(request: Request, system: System, saga_id: str) -> dict[str, Any]:
    """Everything the page of one saga shows."""
    check_saga_id(saga_id)
    queries = system.queries
    detail = queries.detail(saga_id)
    record = queries.get(saga_id)
    saga = system.sagas.get(detail["type"])
    now = datetime.now(UTC)
    running = not record.state.status.settled
    return {
        "saga": detail,
        "on": _on(system, detail, record.state.stage),
        "definition": saga,
        "version_differs": saga is not None and saga.version != detail["definition_version"],
        "columns": graph.build(saga, detail["steps"]),
        "timeline": timeline.build(detail, now),
        "undo": queries.undo_plan(saga_id) if running else None,
        "running": running,
        "can_cancel": record.status in ("pending", "running") and not record.state.pivot_passed,
        "stuck": [s["name"] for s in detail["steps"] if s["status"] == "compensation_failed"],
        "flower": flower_url(system),
        "panels": dashboard_of(request).render("saga", templates.env, detail),
    }


@router.get("/sagas/{saga_id}")
def saga_page(saga_id: str, request: Request, system: SystemDep) -> Response:
    """One saga: header, definition graph, timeline, attempts, history, live."""

    def page(who: Viewer) -> Response:
        values = saga_values(request, system, saga_id)
        name = "_saga_body.html" if request.headers.get("x-fragment") else "saga.html"
        return render(request, system, name, who=who, **values)

    return guarded(request, system, page)


@router.get("/attention")
def attention_page(request: Request, system: SystemDep) -> Response:
    """Failed sagas, grouped by the failing step and its error, with retry and resolve."""

    def page(who: Viewer) -> Response:
        groups = system.queries.attention()
        return render(
            request,
            system,
            "attention.html",
            who=who,
            groups=groups,
            failed=sum(len(g.sagas) for g in groups),
            summary=summary_view,
        )

    return guarded(request, system, page)


@router.get("/health")
def health_page(request: Request, system: SystemDep) -> Response:
    """The last hour per saga type, the workers' heartbeats and the queues' depths."""

    def page(who: Viewer) -> Response:
        now = datetime.now(UTC)
        health = system.queries.health(now)
        depths = _depths(system)
        panels = dashboard_of(request).render("health", templates.env)
        return render(
            request,
            system,
            "health.html",
            who=who,
            health=health,
            depths=depths,
            now=now,
            lost_after=system.settings.worker_lost_after,
            panels=panels,
        )

    return guarded(request, system, page)


def _depths(system: System) -> dict[str, int | None] | str:
    """Messages waiting in each queue, or why the broker cannot say."""
    try:
        system.check_broker()
    except SagaError as exc:
        return str(exc)
    watch = BrokerWatch(system.celery)
    return {queue: watch.depth(queue) for queue in sorted(system.queues)}


@router.get("/login")
def login_page(request: Request, system: SystemDep, next: str = "/") -> Response:
    """Sign in with the API token (or the read token)."""
    return render(request, system, "login.html", next=_local(next), problem=None)


def _local(target: str) -> str:
    """`target` if it is a path of this site, else ``/`` (no open redirect)."""
    return target if target.startswith("/") and not target.startswith("//") else "/"


async def form_of(request: Request) -> dict[str, list[str]]:
    """An urlencoded form's fields (the dashboard's forms are all urlencoded)."""
    from urllib.parse import parse_qs

    body = (await request.body()).decode("utf-8", errors="replace")
    return parse_qs(body, keep_blank_values=True, max_num_fields=1000)


@router.post("/login")
async def login(request: Request, system: SystemDep) -> Response:
    """Check the token; on success set the session cookie and go where the user was going."""
    form = await form_of(request)
    settings = system.settings
    target = _local((form.get("next") or ["/"])[0])
    token = (form.get("token") or [""])[0]
    role = role_for(settings, token) if settings.api_token else None
    if role is None:
        problem = (
            "this server has no SAGAKIT_API_TOKEN: its pages are open and nothing can be changed"
            if not settings.api_token
            else "token: not SAGAKIT_API_TOKEN nor SAGAKIT_API_READ_TOKEN"
        )
        return render(request, system, "login.html", 401, next=target, problem=problem)
    response = RedirectResponse(target, status_code=303)
    secure = request.url.scheme == "https"
    options: dict[str, Any] = {"httponly": True, "samesite": "strict", "secure": secure}
    response.set_cookie(SESSION_COOKIE, session_value(settings, role), path="/", **options)
    name = (form.get("name") or [""])[0].strip()[:80]
    if name:
        response.set_cookie(OPERATOR_COOKIE, name, path="/", max_age=365 * 86400, **options)
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    """Forget the session (the cookie is SameSite=Strict: another site cannot sign you out)."""
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response
