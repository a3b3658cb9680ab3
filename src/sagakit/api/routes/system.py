"""/healthz and /metrics."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ...system import System
from ..deps import SystemDep
from ..metrics import registry_for
from ..schemas import Health

router = APIRouter(tags=["system"])


def _check_database(system: System) -> str:
    try:
        system.queries.ping()
    except Exception as exc:
        return f"unreachable: {type(exc).__name__}"
    return "ok"


def _check_broker(system: System) -> str:
    if system.settings.embedded:
        return "ok (embedded)"
    try:
        with system.celery.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
    except Exception as exc:
        return f"unreachable: {type(exc).__name__}"
    return "ok"


@router.get("/healthz", response_model=Health, responses={503: {"model": Health}})
def healthz(system: SystemDep, response: Response) -> Health:
    """Check that the saga log and the broker answer."""
    database, broker = _check_database(system), _check_broker(system)
    healthy = database == "ok" and broker.startswith("ok")
    if not healthy:
        response.status_code = 503
    return Health(status="ok" if healthy else "degraded", database=database, broker=broker)


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text."}},
)
def metrics(system: SystemDep) -> Response:
    """Prometheus metrics, computed from the saga log (complete across all processes)."""
    registry = registry_for(system.process.db, list(system.sagas))
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
