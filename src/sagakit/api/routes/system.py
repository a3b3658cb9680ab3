"""/healthz and /metrics."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ... import outages
from ...outages import BROKER, DATABASE
from ...system import System
from ..deps import SystemDep
from ..errors import RETRY_AFTER
from ..metrics import registry_for
from ..schemas import Degraded, Health

router = APIRouter(tags=["system"])
logger = logging.getLogger(__name__)


def _check(system: System, kind: str) -> tuple[str, str | None]:
    """How the database or the broker answers, and if it does not, the sentence that says so.

    An outage reads as "unreachable: connection refused", its sentence naming the dependency
    and what to check, as a 503 of any other route does.
    """
    settings = system.settings
    if kind == BROKER and settings.embedded:
        return "ok (embedded)", None
    try:
        if kind == DATABASE:
            system.queries.ping()
        else:
            system.check_broker()
    except Exception as exc:
        outage = outages.unreachable(exc, settings, kind=kind)
        if outage is not None:
            return f"unreachable: {outage.reason}", str(outage)
        logger.exception("the %s check failed", kind)
        dependency = (
            outages.database(settings.database_url)
            if kind == DATABASE
            else outages.broker(settings.broker_url)
        )
        return f"failed: {type(exc).__name__}", f"{dependency.role} check failed: {exc!r}"
    return "ok", None


@router.get(
    "/healthz",
    response_model=Health,
    responses={503: {"model": Degraded, "description": "The saga log or the broker is down."}},
)
def healthz(system: SystemDep) -> Health | JSONResponse:
    """Check that the saga log and the broker answer."""
    database, database_problem = _check(system, DATABASE)
    broker, broker_problem = _check(system, BROKER)
    problems = [problem for problem in (database_problem, broker_problem) if problem]
    if not problems:
        return Health(status="ok", database=database, broker=broker)
    body = Degraded(database=database, broker=broker, detail="; ".join(problems))
    return JSONResponse(body.model_dump(), status_code=503, headers={"Retry-After": RETRY_AFTER})


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text."}},
)
def metrics(system: SystemDep) -> Response:
    """Prometheus metrics, computed from the saga log (complete across all processes)."""
    registry = registry_for(system.process.db, list(system.sagas))
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
