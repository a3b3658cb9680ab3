"""Commands that start and inspect sagas: run, list, show, cancel, retry."""

from __future__ import annotations

import json
import sys
import time
from contextlib import ExitStack
from typing import Annotated, Any

import typer
from rich.live import Live

from ..core.errors import InvalidInput
from ..core.machine import SETTLED_STATUSES, SagaStatus
from ..engine import SAGA_ID, Engine
from ..store.records import SagaRecord
from ..system import System
from ..views import saga_view, summary_view
from . import render


def open_system(stack: ExitStack, *, worker: bool) -> System:
    """Build the System; in embedded mode, also run the in-process worker."""
    system = stack.enter_context(System())
    if worker and system.settings.embedded:
        system.start_embedded()
    return system


def view_of(engine: Engine, saga_id: str) -> dict[str, Any]:
    """The full JSON view of one saga."""
    return saga_view(engine.get(saga_id), engine.attempts(saga_id), engine.history(saga_id))


def checked_id(saga_id: str) -> str:
    """Reject malformed ids before they reach the database."""
    if not SAGA_ID.match(saga_id):
        raise InvalidInput("id", f"{saga_id!r} is not a saga id (expected {SAGA_ID.pattern})")
    return saga_id


def parse_fields(args: list[str]) -> dict[str, str]:
    """Turn ``--some-field value`` pairs into ``{"some_field": "value"}``."""
    fields: dict[str, str] = {}
    rest = list(args)
    while rest:
        flag = rest.pop(0)
        if not flag.startswith("--") or len(flag) < 3:
            raise InvalidInput(flag, "expected --field value")
        name, _, value = flag[2:].partition("=")
        if not value:
            if not rest:
                raise InvalidInput(flag, "missing value")
            value = rest.pop(0)
        fields[name.replace("-", "_")] = value
    return fields


def follow(engine: Engine, saga_id: str, timeout: float, live: bool) -> dict[str, Any]:
    """Show the saga's steps as they change until it settles (bounded by `timeout`)."""
    deadline = time.monotonic() + timeout
    view = view_of(engine, saga_id)
    console = render.console(stderr=True)
    with Live(
        render.progress(view),
        console=console,
        refresh_per_second=8,
        transient=True,
        auto_refresh=live,
    ) as display:
        while view["status"] not in SETTLED_STATUSES:
            if time.monotonic() > deadline:
                raise TimeoutError(f"saga {saga_id} still {view['status']} after {timeout}s")
            time.sleep(0.1)
            view = view_of(engine, saga_id)
            display.update(render.progress(view))
    return view


def register(app: typer.Typer) -> None:
    """Add the saga commands to `app`."""

    @app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
    def run(
        ctx: typer.Context,
        saga_type: Annotated[str, typer.Argument(help="Saga type, e.g. slam.")],
        input_json: Annotated[str | None, typer.Option("--input", help="Input as JSON.")] = None,
        wait: Annotated[bool, typer.Option(help="Follow the saga until it settles.")] = False,
        as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
        idempotency_key: Annotated[str | None, typer.Option(help="Start at most once.")] = None,
        timeout: Annotated[float, typer.Option(help="Seconds to wait with --wait.")] = 300.0,
    ) -> None:
        """Start a saga; extra ``--field value`` options become input fields."""
        data: dict[str, Any] = {}
        if input_json:
            try:
                data = json.loads(input_json)
            except ValueError as exc:
                raise InvalidInput("--input", f"not valid JSON ({exc})") from None
            if not isinstance(data, dict):
                raise InvalidInput("--input", "must be a JSON object")
        fields = parse_fields(ctx.args)
        with ExitStack() as stack:
            system = open_system(stack, worker=True)
            engine = system.engine
            if engine.definition(saga_type).input_model is None:
                # No model to coerce strings: read each value as JSON where it parses.
                data.update({k: _maybe_json(v) for k, v in fields.items()})
            else:
                data.update(fields)
            result = engine.start(saga_type, data, idempotency_key=idempotency_key)
            if system.settings.embedded and not wait:
                render.console(stderr=True).print(
                    "embedded mode: the saga runs inside this process, so sagakit waits for it "
                    "(set SAGAKIT_BROKER_URL to run it on separate workers)"
                )
                wait = True
            if not wait:
                typer.echo(
                    json.dumps({"id": result.saga_id, "created": result.created})
                    if as_json
                    else result.saga_id
                )
                return
            view = follow(engine, result.saga_id, timeout, live=sys.stderr.isatty())
            if as_json:
                typer.echo(json.dumps(view, default=str))
            else:
                out = render.console()
                out.print(render.saga(view, with_history=False, width=out.width))
            if view["status"] != "completed":
                raise typer.Exit(1)

    @app.command("list")
    def list_(
        status: Annotated[str | None, typer.Option(help="Only this status.")] = None,
        saga_type: Annotated[str | None, typer.Option("--type", help="Only this type.")] = None,
        limit: Annotated[int, typer.Option(min=1, max=1000)] = 20,
        as_json: Annotated[bool, typer.Option("--json")] = False,
    ) -> None:
        """List sagas, newest first."""
        statuses = [s.value for s in SagaStatus]
        if status is not None and status not in statuses:
            raise InvalidInput("--status", f"{status!r} is not one of {', '.join(statuses)}")
        with ExitStack() as stack:
            engine = open_system(stack, worker=False).engine
            views = [
                summary_view(r)
                for r in engine.store.list_sagas(status=status, saga_type=saga_type, limit=limit)
            ]
        if as_json:
            typer.echo(json.dumps(views))
        else:
            render.console().print(render.listing(views))

    @app.command()
    def show(
        saga_id: Annotated[str, typer.Argument(metavar="ID")],
        as_json: Annotated[bool, typer.Option("--json")] = False,
    ) -> None:
        """Show a saga: status, timeline of every attempt, transition history."""
        with ExitStack() as stack:
            engine = open_system(stack, worker=False).engine
            view = view_of(engine, checked_id(saga_id))
        if as_json:
            typer.echo(json.dumps(view, default=str))
        else:
            out = render.console()
            out.print(render.saga(view, width=out.width))

    @app.command()
    def cancel(
        saga_id: Annotated[str, typer.Argument(metavar="ID")],
        reason: Annotated[str, typer.Option(help="Recorded with the saga.")] = "operator request",
    ) -> None:
        """Stop a saga's forward steps and compensate what it did."""
        with ExitStack() as stack:
            system = open_system(stack, worker=True)
            record = system.engine.cancel(checked_id(saga_id), reason)
            record = _settle_embedded(system, record.saga_id) or record
        typer.echo(f"{record.saga_id} {record.status}")

    @app.command()
    def retry(saga_id: Annotated[str, typer.Argument(metavar="ID")]) -> None:
        """Resume a failed saga where it stopped."""
        with ExitStack() as stack:
            system = open_system(stack, worker=True)
            record = system.engine.retry(checked_id(saga_id))
            record = _settle_embedded(system, record.saga_id) or record
        typer.echo(f"{record.saga_id} {record.status}")


def _settle_embedded(system: System, saga_id: str) -> SagaRecord | None:
    """In embedded mode the compensations run in this process: wait for them."""
    if not system.settings.embedded:
        return None
    return system.engine.wait(saga_id, timeout=300)


def _maybe_json(value: str) -> Any:
    try:
        return json.loads(value)
    except ValueError:
        return value
