"""Commands that start and inspect sagas: run, list, show, cancel, retry, resolve."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import TYPE_CHECKING, Annotated, Any

import typer
from typer.core import TyperCommand

from ..core.errors import InvalidInput, SagaNotFound
from ..core.inputs import check_saga_id
from ..core.state import SETTLED_STATUSES, SagaStatus

if TYPE_CHECKING:
    from ..queries import Queries
    from ..system import System


def open_system(stack: ExitStack, *, worker: bool, imports: list[str] | None = None) -> System:
    """Build the System for a command that sends messages (`worker`) or only reads.

    In embedded mode the in-process worker starts; otherwise the broker must take a
    connection first, so that nothing is started that could not be sent.
    """
    from ..system import System

    system = stack.enter_context(System(imports=imports or ()))
    if worker:
        ready_to_send(system)
    return system


def ready_to_send(system: System) -> None:
    """Start the in-process worker (embedded mode), else check that the broker answers."""
    if system.settings.embedded:
        system.start_embedded()
    else:
        check_broker(system)


def check_broker(system: System, timeout: float = 5.0) -> None:
    """Raise `Unreachable` unless the configured broker takes a connection within `timeout`."""
    from ..outages import BROKER, unreachable

    try:
        with system.celery.connection_for_write() as conn:
            conn.ensure_connection(max_retries=0, timeout=timeout)
    except Exception as exc:
        outage = unreachable(exc, system.settings, kind=BROKER)
        if outage is None:
            raise
        raise outage from None


def open_reads(stack: ExitStack) -> Queries:
    """The read side alone: no saga definitions, no Celery app, no migration.

    It needs only the saga log's URL, and reads on a connection of the driver's own: neither
    pydantic-settings nor SQLAlchemy is imported, unless the URL needs SQLAlchemy to be
    understood (another driver, SQLite URI options).
    """
    from ..environ import database_url
    from ..queries import Queries
    from ..store.dbapi import Direct

    url = database_url()
    if Direct.supports(url):
        direct = Direct(url)
        stack.callback(direct.close)
        return Queries(direct)
    from ..store import make_db
    from ..store.db import Pooled

    db = make_db(url)
    stack.callback(db.dispose)
    return Queries(Pooled(db))


def never_migrated(queries: Queries, error: Exception) -> bool:
    """Whether `error` only says the saga log has no tables yet (nothing ever ran here)."""
    from ..outages import unreachable

    return unreachable(error) is None and queries.missing_log(error)


def checked_id(saga_id: str) -> str:
    """Reject malformed ids before they reach the database."""
    return check_saga_id(saga_id, "id")


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


def follow(queries: Queries, saga_id: str, timeout: float, live: bool) -> dict[str, Any]:
    """Show the saga's steps as they change until it settles (bounded by `timeout`)."""
    from rich.live import Live

    from . import render

    deadline = time.monotonic() + timeout
    view = queries.detail(saga_id)
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
            view = queries.detail(saga_id)
            display.update(render.progress(view))
    return view


VALUE_OPTIONS = frozenset({"--input", "--idempotency-key", "--timeout"})
"""run's own options that take a value (the word after them is not the saga type)."""


class RunCommand(TyperCommand):
    """`run`, whose help lists the input fields of the saga type it is given."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        """Note the saga type before ``--help`` cuts the parsing short."""
        if "--help" in args:
            words = iter(args)
            for word in words:
                if word in VALUE_OPTIONS:
                    next(words, None)
                elif not word.startswith("-"):
                    ctx.meta["sagakit.saga_type"] = word
                    break
        return list(super().parse_args(ctx, args))

    def format_help(self, ctx: Any, formatter: Any) -> None:
        """The command's help, then the saga type's input fields."""
        super().format_help(ctx, formatter)
        saga_type = ctx.meta.get("sagakit.saga_type")
        if saga_type is None:
            return
        from ..registry import discover
        from ..settings import load_settings
        from . import fields, render

        sagas = discover(load_settings().imports)
        console = render.console()
        saga = sagas.get(saga_type)
        if saga is None:
            known = ", ".join(sorted(sagas)) or "none"
            console.print(f"unknown saga type {saga_type!r} (known: {known})")
            return
        console.print(fields.render(saga_type, saga.input_model), width=min(console.width, 100))


def pinned(word: str) -> tuple[str, int | None]:
    """``order@2`` as ("order", 2); ``order`` as ("order", None). Raises InvalidInput."""
    saga_type, at, version = word.partition("@")
    if not at:
        return word, None
    if not version.isdigit() or int(version) < 1:
        raise InvalidInput("TYPE", f"{word!r}: the version after @ must be a positive integer")
    return saga_type, int(version)


def register(app: typer.Typer) -> None:
    """Add the saga commands to `app`."""

    @app.command(
        cls=RunCommand,
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
        epilog="`sagakit run TYPE --help` lists the input fields of TYPE.",
    )
    def run(
        ctx: typer.Context,
        saga_type: Annotated[
            str, typer.Argument(help="Saga type, e.g. slam; TYPE@N pins version N.")
        ],
        input_json: Annotated[str | None, typer.Option("--input", help="Input as JSON.")] = None,
        wait: Annotated[bool, typer.Option(help="Follow the saga until it settles.")] = False,
        as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
        idempotency_key: Annotated[str | None, typer.Option(help="Start at most once.")] = None,
        timeout: Annotated[float, typer.Option(help="Seconds to wait with --wait.")] = 300.0,
        choreographed: Annotated[
            bool, typer.Option(help="Run it choreographed: services react to events (Redis).")
        ] = False,
    ) -> None:
        """Start a saga; extra `--field value` options become input fields."""
        data: dict[str, Any] = {}
        if input_json:
            try:
                data = json.loads(input_json)
            except ValueError as exc:
                raise InvalidInput("--input", f"not valid JSON ({exc})") from None
            if not isinstance(data, dict):
                raise InvalidInput("--input", "must be a JSON object")
        from ..core.inputs import validated_input
        from . import render

        fields = parse_fields(ctx.args)
        if choreographed:
            from . import choreography

            data.update({k: _maybe_json(v) for k, v in fields.items()})
            choreography.start(saga_type, data, wait=wait, timeout=timeout, as_json=as_json)
            return
        saga_type, version = pinned(saga_type)
        with ExitStack() as stack:
            # Bad input is told before a worker starts or the broker is asked.
            system = open_system(stack, worker=False)
            engine = system.engine
            model = engine.definition(saga_type, version).input_model
            if model is None:
                # No model to coerce strings: read each value as JSON where it parses.
                data.update({k: _maybe_json(v) for k, v in fields.items()})
            else:
                # The model coerces text to numbers and booleans; objects and lists are JSON.
                from .fields import json_fields, schema_of

                structured = json_fields(schema_of(model))
                data.update(
                    {k: _maybe_json(v) if k in structured else v for k, v in fields.items()}
                )
            validated_input(data, model)
            ready_to_send(system)
            result = engine.start(saga_type, data, idempotency_key=idempotency_key, version=version)
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
            with interruptible(result.saga_id, embedded=system.settings.embedded):
                view = follow(system.queries, result.saga_id, timeout, live=sys.stderr.isatty())
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
            queries = open_reads(stack)
            try:
                views, _ = queries.page(status=status, saga_type=saga_type, limit=limit)
            except Exception as exc:
                if not never_migrated(queries, exc):
                    raise
                views = []
        if as_json:
            typer.echo(json.dumps(views))
        else:
            from . import render

            render.console().print(render.listing(views))

    @app.command()
    def show(
        saga_id: Annotated[str, typer.Argument(metavar="ID")],
        as_json: Annotated[bool, typer.Option("--json")] = False,
    ) -> None:
        """Show a saga: status, timeline of every attempt, transition history."""
        checked_id(saga_id)
        with ExitStack() as stack:
            queries = open_reads(stack)
            try:
                view = queries.detail(saga_id)
            except Exception as exc:
                if not never_migrated(queries, exc):
                    raise
                raise SagaNotFound(saga_id) from None
        if as_json:
            typer.echo(json.dumps(view, default=str))
        else:
            from . import render

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
            system.engine.cancel(checked_id(saga_id), reason)
            status = _settled_status(system, saga_id)
        typer.echo(f"{saga_id} {status}")

    @app.command()
    def retry(saga_id: Annotated[str, typer.Argument(metavar="ID")]) -> None:
        """Resume a failed saga where it stopped."""
        with ExitStack() as stack:
            system = open_system(stack, worker=True)
            system.engine.retry(checked_id(saga_id))
            status = _settled_status(system, saga_id)
        typer.echo(f"{saga_id} {status}")

    @app.command()
    def resolve(
        saga_id: Annotated[str, typer.Argument(metavar="ID")],
        step: Annotated[str, typer.Argument(metavar="STEP", help="Its failed compensation.")],
        reason: Annotated[str, typer.Option(help="What was done by hand, and why.")],
        by: Annotated[str | None, typer.Option(help="Who did it (default: user@host).")] = None,
    ) -> None:
        """Record a failed compensation as done by hand, and go on compensating."""
        with ExitStack() as stack:
            system = open_system(stack, worker=True)
            system.engine.resolve(checked_id(saga_id), step, reason, by or _operator())
            status = _settled_status(system, saga_id)
        typer.echo(f"{saga_id} {status}")


def _operator() -> str:
    import getpass
    import socket

    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def _settled_status(system: System, saga_id: str) -> str:
    """In embedded mode the steps run in this process: wait for them to settle."""
    if not system.settings.embedded:
        return system.queries.get(saga_id).status
    with interruptible(saga_id, embedded=True):
        return system.queries.wait(saga_id, timeout=300).status


@contextmanager
def interruptible(saga_id: str, *, embedded: bool) -> Iterator[None]:
    """Turn Ctrl-C while waiting for a saga into one line and exit status 130.

    The saga is durable either way. In embedded mode its steps run in this process: the
    first Ctrl-C lets the step in flight finish (the worker's warm shutdown, on the way
    out), whose outcome the log keeps, and the next embedded process resumes the saga (its
    sweeper sends again what this one's in-memory broker held). A second Ctrl-C quits at
    once; the step it cut short is retried once this worker's heartbeat is stale.
    """
    try:
        yield
    except KeyboardInterrupt:
        from . import render

        if embedded:
            signal.signal(signal.SIGINT, _quit_now)
            message = (
                f"interrupted: saga {saga_id} is still running and resumes with the next "
                "sagakit command that runs sagas here (sagakit worker, sagakit run); letting "
                "the step in flight finish, Ctrl-C again to quit now"
            )
        else:
            message = (
                f"interrupted: saga {saga_id} keeps running on the workers; "
                f"`sagakit show {saga_id}` tells how it ends"
            )
        render.console(stderr=True).print(message, soft_wrap=True, markup=False)
        raise typer.Exit(130) from None


def _quit_now(*_: object) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(130)


def _maybe_json(value: str) -> Any:
    try:
        return json.loads(value)
    except ValueError:
        return value
