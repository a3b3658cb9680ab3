"""Commands of choreographed sagas: participant, tracker, dead-letters, and run's start."""

from __future__ import annotations

import json
import signal
import threading
from typing import Annotated, Any

import typer


def _choreography(*, logs: bool = True) -> Any:
    """The choreography of the settings; `logs`: this process logs at SAGAKIT_LOG_LEVEL
    (the long-running commands), else only what Python logs by default."""
    from ..choreography import Choreography
    from ..logs import configure_logging
    from ..settings import load_settings

    settings = load_settings()
    if logs:
        configure_logging(settings.log_level, settings.log_format)
    return Choreography(settings)


def _until_signalled() -> threading.Event:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def register(app: typer.Typer) -> None:
    @app.command()
    def participant(
        service: Annotated[str, typer.Argument(help="The service, e.g. robots.")],
        consumer: Annotated[
            str | None, typer.Option(help="Consumer name (default: service@host:pid).")
        ] = None,
    ) -> None:
        """Run a service's handlers of choreographed sagas' events, until Ctrl-C."""
        runner = _choreography().runner(service, consumer)
        runner.run(_until_signalled())

    @app.command()
    def tracker(
        consumer: Annotated[
            str | None, typer.Option(help="Consumer name (default: tracker@host:pid).")
        ] = None,
    ) -> None:
        """Fold choreographed sagas' events into the saga log and time out late steps."""
        from ..choreography.participant import consumer_name, guarded

        folding = _choreography().tracker(consumer or consumer_name("tracker"))
        stop = _until_signalled()
        while not stop.is_set():
            if not guarded(folding.step):
                stop.wait(1.0)

    @app.command("dead-letters")
    def dead_letters(
        replay: Annotated[
            list[str] | None, typer.Option(help="Publish this dead letter again (repeatable).")
        ] = None,
        replay_all: Annotated[
            bool, typer.Option("--all", help="Replay every dead letter.")
        ] = False,
        as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    ) -> None:
        """List the events a service gave up on, or replay them once the fault is fixed."""
        bus = _choreography(logs=False).bus
        ids = list(replay or [])
        if replay_all:
            ids += [letter.id for letter in bus.dead_letters(10_000)]
        if ids:
            for dead_id in ids:
                new = bus.replay(dead_id)
                typer.echo(f"replayed {dead_id} as {new}")
            return
        letters = [letter.view() for letter in bus.dead_letters()]
        if as_json:
            typer.echo(json.dumps(letters))
            return
        if not letters:
            typer.echo("no dead letters")
        for v in letters:
            event = v["event"]
            typer.echo(
                f"{v['id']}  {v['group']:<12} {event.get('type', '?'):<20} "
                f"saga {event.get('saga_id', '?')}  after {v['deliveries']} deliveries: "
                f"{v['error']}"
            )


def start(
    saga_type: str, data: dict[str, Any], *, wait: bool, timeout: float, as_json: bool
) -> None:
    """`sagakit run --choreographed`: start the choreography of `saga_type`."""
    choreography = _choreography(logs=False)
    saga_id = choreography.start(saga_type, data)
    if not wait:
        typer.echo(json.dumps({"id": saga_id, "created": True}) if as_json else saga_id)
        return
    from ..queries import Queries
    from ..store import make_db
    from ..store.db import Pooled
    from . import render

    queries = Queries(Pooled(make_db(choreography.settings.database_url)))
    record = queries.wait(saga_id, timeout=timeout)
    view = queries.detail(saga_id)
    if as_json:
        typer.echo(json.dumps(view, default=str))
    else:
        out = render.console()
        out.print(render.saga(view, with_history=False, width=out.width))
    if record.status != "completed":
        raise typer.Exit(1)
