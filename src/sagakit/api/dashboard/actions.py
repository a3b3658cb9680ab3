"""The dashboard's forms that change sagas: retry, cancel, resolve, and retry a group.

Each is a POST (never a GET) from a signed-in session with the write token, carries the
page's CSRF token and is refused from another origin (`session.check_form`). Like the API's
routes, each checks the broker first, so nothing is recorded that could not be sent. The
outcome comes back as a one-line notice on the page the form was on.
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from ... import outages
from ...core.errors import InvalidInput, SagaError
from ...core.inputs import check_saga_id
from ...system import System
from ..deps import SystemDep
from .pages import FLASH_COOKIE, _local, form_of, problem_page
from .session import check_form, viewer

router = APIRouter(include_in_schema=False)
MAX_GROUP = 500


def _field(form: dict[str, list[str]], name: str) -> str:
    return (form.get(name) or [""])[0].strip()


def _back(target: str, notice: str) -> Response:
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        FLASH_COOKIE, notice.replace("\n", " ")[:300], path="/", httponly=True, samesite="strict"
    )
    return response


async def _act(
    request: Request, system: System, default_back: str, work: Callable[[dict[str, list[str]]], str]
) -> Response:
    """Check the form, do `work` in a thread, and go back with its notice (or the error's)."""
    form = await form_of(request)
    target = _local(_field(form, "back") or default_back)
    try:
        check_form(request, viewer(request, system.settings), _field(form, "csrf"))
    except SagaError as exc:
        return problem_page(request, system, exc)
    try:
        notice = await run_in_threadpool(work, form)
    except outages.Unreachable as exc:
        notice = f"not done: {exc}"
    except SagaError as exc:
        notice = f"refused: {exc}"
    except Exception as exc:
        outage = outages.unreachable(exc, system.settings)
        if outage is None:
            raise
        notice = f"not done: {outage}"
    return _back(target, notice)


@router.post("/sagas/{saga_id}/retry")
async def retry(saga_id: str, request: Request, system: SystemDep) -> Response:
    """Resume a failed saga where it stopped."""

    def work(_: dict[str, list[str]]) -> str:
        check_saga_id(saga_id)
        system.check_broker()
        system.engine.retry(saga_id)
        return f"retrying {saga_id}: now {system.queries.get(saga_id).status}"

    return await _act(request, system, f"/sagas/{saga_id}", work)


@router.post("/sagas/{saga_id}/cancel")
async def cancel(saga_id: str, request: Request, system: SystemDep) -> Response:
    """Stop the saga's forward steps and compensate what it did."""

    def work(form: dict[str, list[str]]) -> str:
        check_saga_id(saga_id)
        who = viewer(request, system.settings).operator
        reason = _field(form, "reason") or f"cancelled from the dashboard by {who}"
        system.check_broker()
        system.engine.cancel(saga_id, reason[:500])
        return f"cancelling {saga_id}: now {system.queries.get(saga_id).status}"

    return await _act(request, system, f"/sagas/{saga_id}", work)


@router.post("/sagas/{saga_id}/resolve")
async def resolve(saga_id: str, request: Request, system: SystemDep) -> Response:
    """Record a failed compensation as done by hand (who and why), and go on compensating."""

    def work(form: dict[str, list[str]]) -> str:
        check_saga_id(saga_id)
        step, reason = _field(form, "step"), _field(form, "reason")
        by = _field(form, "by") or viewer(request, system.settings).operator
        if not step:
            raise InvalidInput("step", "name the step whose compensation was done by hand")
        if not reason:
            raise InvalidInput("reason", "say what was done by hand, and why")
        system.check_broker()
        system.engine.resolve(saga_id, step, reason[:1000], by[:80])
        return f"resolved {step} of {saga_id} by hand: now {system.queries.get(saga_id).status}"

    return await _act(request, system, f"/sagas/{saga_id}", work)


@router.post("/attention/retry")
async def retry_group(request: Request, system: SystemDep) -> Response:
    """Retry each selected failed saga; say how many were resumed and which were refused."""

    def work(form: dict[str, list[str]]) -> str:
        ids = [check_saga_id(i) for i in dict.fromkeys(form.get("saga_id") or ())]
        if not ids:
            raise InvalidInput("saga_id", "select at least one saga to retry")
        if len(ids) > MAX_GROUP:
            raise InvalidInput("saga_id", f"at most {MAX_GROUP} sagas at once")
        system.check_broker()
        refused = []
        for saga_id in ids:
            try:
                system.engine.retry(saga_id)
            except SagaError as exc:
                refused.append(f"{saga_id} ({exc})")
        done = len(ids) - len(refused)
        notice = f"retried {done} of {len(ids)} saga{'s' if len(ids) != 1 else ''}"
        return notice + (f"; refused: {'; '.join(refused)}" if refused else "")

    return await _act(request, system, "/attention", work)
