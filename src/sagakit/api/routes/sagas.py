"""/api/sagas: start, list, read, cancel and retry sagas.

The routes that send messages (start, cancel, retry) first check that the broker takes a
connection, so that nothing is started that could not be sent: while it is down they answer
503 and change nothing, as `sagakit run`, `cancel` and `retry` refuse with exit status 3.

The bearer token is checked at router level: the app factory adds `deps.require_token` to
these routers when ``SAGAKIT_API_TOKEN`` is set.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Body, Header, Path, Query, Response
from pydantic import WithJsonSchema

from ...core.definition import NAME_PATTERN, Saga
from ...core.errors import InvalidInput
from ...core.inputs import SAGA_ID
from ...queries import summary_view
from ..deps import SystemDep
from ..schemas import (
    CancelRequest,
    Problem,
    ResolveRequest,
    SagaDetail,
    SagaPage,
    SagaSummary,
    Started,
    StartSaga,
    Status,
    start_body,
    start_examples,
)

router = APIRouter(prefix="/api/sagas", tags=["sagas"])
SagaId = Annotated[str, Path(pattern=SAGA_ID.pattern, max_length=64, description="Saga id.")]
ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": Problem, "description": "No saga with that id."},
    422: {"model": Problem, "description": "Invalid input: `field` says which and why."},
}
MUTATING: dict[int | str, dict[str, Any]] = {
    **ERRORS,
    409: {
        "model": Problem,
        "description": "The saga's status does not allow it, or its definition version is "
        "not deployed here (`field` is `version`).",
    },
}
UNREADABLE: dict[int | str, dict[str, Any]] = {
    400: {"model": Problem, "description": "The body could not be read (e.g. not UTF-8)."},
}
WITH_BODY: dict[int | str, dict[str, Any]] = {**MUTATING, **UNREADABLE}
STARTING: dict[int | str, dict[str, Any]] = {
    422: {"model": Problem, "description": "Invalid input or unknown type: `field` says which."},
    409: {"model": Problem, "description": "The pinned `version` is not deployed here."},
    **UNREADABLE,
}


def _utc(value: datetime | None, name: str) -> datetime | None:
    if value is None:
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except OverflowError:  # e.g. 0001-01-01T00:00:00+01:00 has no UTC datetime
        raise InvalidInput(f"query.{name}", "out of range in UTC") from None


def _started(saga_id: str, created: bool, status: str) -> Started:
    url = f"/api/sagas/{saga_id}"
    return Started(id=saga_id, url=url, events_url=f"{url}/events", created=created, status=status)


def start_router(saga_types: Mapping[str, Saga]) -> APIRouter:
    """``POST /api/sagas``, its body documented with the input model of every saga type."""
    start = APIRouter(prefix="/api/sagas", tags=["sagas"])

    def start_saga(
        body: StartSaga,
        system: SystemDep,
        response: Response,
        idempotency_key: Annotated[
            str | None,
            Header(
                alias="Idempotency-Key",
                min_length=1,
                max_length=200,
                description="Send the same key again to get the first saga back.",
            ),
            WithJsonSchema({"type": "string", "minLength": 1, "maxLength": 200}),
        ] = None,
    ) -> Started:
        """Start a saga; the same Idempotency-Key twice returns the same saga."""
        system.check_broker()
        result = system.engine.start(
            body.type, body.input, idempotency_key=idempotency_key, version=body.version
        )
        record = system.queries.get(result.saga_id)
        response.headers["Location"] = f"/api/sagas/{result.saga_id}"
        return _started(result.saga_id, result.created, record.status)

    # Parsed as StartSaga; documented with this app's saga types (see schemas.start_body).
    start_saga.__annotations__["body"] = Annotated[
        start_body(saga_types), Body(openapi_examples=start_examples(saga_types))
    ]
    start.add_api_route(
        "",
        start_saga,
        methods=["POST"],
        status_code=202,
        response_model=Started,
        responses=STARTING,
    )
    return start


@router.get("", response_model=SagaPage, responses=ERRORS)
def list_sagas(
    system: SystemDep,
    status: Status | None = None,
    saga_type: Annotated[
        str | None, Query(alias="type", pattern=NAME_PATTERN.pattern, max_length=64)
    ] = None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
    search: Annotated[
        str | None,
        Query(min_length=1, max_length=200, description="A saga id or an idempotency key."),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[
        str | None,
        Query(max_length=200, description="`next_cursor` of the previous page."),
    ] = None,
) -> SagaPage:
    """Sagas, newest first; filter by status, type, creation time, id or key."""
    views, following = system.queries.page(
        status=status,
        saga_type=saga_type,
        created_after=_utc(created_after, "created_after"),
        created_before=_utc(created_before, "created_before"),
        search=search,
        cursor=cursor,
        limit=limit,
    )
    items = [SagaSummary.model_validate(v) for v in views]
    return SagaPage(items=items, limit=limit, next_cursor=following)


@router.get("/{saga_id}", response_model=SagaDetail, responses=ERRORS)
def get_saga(saga_id: SagaId, system: SystemDep) -> SagaDetail:
    """A saga: status, steps with their attempts and compensations, transition history."""
    return SagaDetail.model_validate(system.queries.detail(saga_id))


@router.post(
    "/{saga_id}/resolve",
    response_model=SagaSummary,
    responses=WITH_BODY,
)
def resolve_saga(saga_id: SagaId, system: SystemDep, body: ResolveRequest) -> SagaSummary:
    """Record a failed compensation as done by hand (who and why go into the history) and
    go on compensating; the saga ends `compensated` once nothing else is left."""
    system.check_broker()  # it goes on compensating: nothing is recorded that cannot be sent
    system.engine.resolve(saga_id, body.step, body.reason, body.by)
    return SagaSummary.model_validate(summary_view(system.queries.get(saga_id)))


@router.post(
    "/{saga_id}/cancel",
    response_model=SagaSummary,
    responses=WITH_BODY,
)
def cancel_saga(
    saga_id: SagaId, system: SystemDep, body: Annotated[CancelRequest | None, Body()] = None
) -> SagaSummary:
    """Stop the saga's forward steps and compensate what it did."""
    reason = (body or CancelRequest()).reason
    system.check_broker()
    system.engine.cancel(saga_id, reason)
    return SagaSummary.model_validate(summary_view(system.queries.get(saga_id)))


@router.post(
    "/{saga_id}/retry",
    response_model=SagaSummary,
    responses=MUTATING,
)
def retry_saga(saga_id: SagaId, system: SystemDep) -> SagaSummary:
    """Resume a failed saga where it stopped."""
    system.check_broker()
    system.engine.retry(saga_id)
    return SagaSummary.model_validate(summary_view(system.queries.get(saga_id)))
