"""`sagakit robots`: list the fleet; `sagakit robots add` and `retire` change it.
`sagakit faults lift` and `list`: the injected faults an operator lifted (`lifting`)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import sqlalchemy as sa
import typer
from rich.console import Console
from rich.table import Table

from . import fleet, lifting
from .databases import Databases, SchemaMismatch
from .settings import Service, SlamSettings

STYLES = {"free": "green", "in_use": "yellow", "retiring": "magenta", "retired": "dim"}

JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


@contextmanager
def _robots_db() -> Iterator[sa.Engine]:
    """The robot service's database, for one command; a bad setup is one line on stderr."""
    databases = Databases(SlamSettings())
    try:
        yield databases.engine(Service.ROBOTS)
    except sa.exc.OperationalError:
        raise  # an unreachable database: sagakit's CLI says which, in one line (exit 3)
    except (SchemaMismatch, fleet.UnknownRobots, ValueError, sa.exc.SQLAlchemyError) as exc:
        typer.echo(f"error: {exc}".splitlines()[0], err=True)
        raise typer.Exit(2) from None
    finally:
        databases.dispose()


def _change(work: Callable[[sa.Connection], Any]) -> Any:
    with _robots_db() as engine, engine.begin() as conn:
        return work(conn)


def register_cli(app: typer.Typer) -> None:
    """Add the SLAM example's commands to the `sagakit` CLI."""
    robots = typer.Typer(help="The SLAM robot fleet: list it, add robots, retire robots.")

    @robots.callback(invoke_without_command=True)
    def show(
        ctx: typer.Context,
        as_json: JsonOption = False,
        everyone: Annotated[bool, typer.Option("--all", help="Include retired robots.")] = False,
    ) -> None:
        """List the fleet: each robot's state and the mission holding it."""
        if ctx.invoked_subcommand is not None:
            return
        with _robots_db() as engine:
            listed = fleet.list_fleet(engine, include_retired=True)
        shown = listed if everyone else [r for r in listed if r["state"] != "retired"]
        if as_json:
            typer.echo(json.dumps(shown))
            return
        _print_fleet(shown, retired=len(listed) - len(shown))

    @robots.command()
    def add(
        count: Annotated[
            int, typer.Argument(min=1, max=fleet.MAX_ADD, help="How many robots to add.")
        ] = 1,
        as_json: JsonOption = False,
    ) -> None:
        """Add robots to the fleet (named scout-NN after every robot it ever had)."""
        names = _change(lambda conn: fleet.add(conn, count))
        typer.echo(json.dumps(names) if as_json else f"added {', '.join(names)}")

    @robots.command()
    def retire(
        names: Annotated[list[str], typer.Argument(help="Robot names, e.g. scout-03.")],
        as_json: JsonOption = False,
    ) -> None:
        """Retire robots: a free robot at once; one in use when its mission releases it.

        A retired robot is never handed out again and stays listed under --all.
        """
        outcome = _change(lambda conn: fleet.retire(conn, names))
        if as_json:
            typer.echo(json.dumps(outcome))
            return
        for name, what in outcome.items():
            typer.echo(f"{name}: {what}")

    app.add_typer(robots, name="robots")
    app.add_typer(_faults_cli(), name="faults")


def _faults_cli() -> typer.Typer:
    faults = typer.Typer(
        help="The SLAM mission's injected faults: lift one an operator has dealt with."
    )

    @faults.command("lift")
    def lift_(
        saga_id: Annotated[str, typer.Argument(help="The mission's saga id.")],
        reason: Annotated[str, typer.Option("--reason", help="Why (kept with the lift).")],
        step: Annotated[
            str | None,
            typer.Option(
                help="A step (explore: every branch) or instance (explore[1]); all if unset."
            ),
        ] = None,
        by: Annotated[
            str | None, typer.Option("--by", help="Who lifts it (default: $USER).")
        ] = None,
        as_json: JsonOption = False,
    ) -> None:
        """Lift the mission's injected faults (at one step, or all): the next attempt of
        that step, or `sagakit retry ID` of a failed mission, runs without them."""
        if not reason.strip():
            typer.echo("error: --reason must not be empty", err=True)
            raise typer.Exit(2)
        try:
            services = lifting.services_for(step)
        except ValueError as exc:
            typer.echo(f"error: --step: {exc}", err=True)
            raise typer.Exit(2) from None
        who = by or os.environ.get("USER") or "operator"
        databases = Databases(SlamSettings())
        try:
            for service in services:
                with databases.engine(service).begin() as conn:
                    lifting.lift(conn, service, saga_id, step, by=who, reason=reason)
        finally:
            databases.dispose()
        where = "every step" if step is None else step
        names = [s.value for s in services]
        if as_json:
            typer.echo(json.dumps({"saga_id": saga_id, "step": step, "services": names}))
            return
        typer.echo(
            f"lifted the injected faults of {saga_id} at {where} ({', '.join(names)}); "
            f"a failed mission goes on with: sagakit retry {saga_id}"
        )

    @faults.command("list")
    def list_(
        saga_id: Annotated[str, typer.Argument(help="The mission's saga id.")],
        as_json: JsonOption = False,
    ) -> None:
        """The lifts recorded for a mission, in every service's database."""
        databases = Databases(SlamSettings())
        try:
            found: dict[tuple[str, str], dict[str, Any]] = {}
            for service in Service:  # services may share a database: each lift once
                with databases.engine(service).connect() as conn:
                    for row in lifting.listed(conn, service, saga_id):
                        found[row["service"], row["step"]] = row
        finally:
            databases.dispose()
        rows = list(found.values())
        if as_json:
            typer.echo(json.dumps(rows))
            return
        if not rows:
            typer.echo(f"no faults lifted for {saga_id}")
        for row in rows:
            typer.echo(
                f"{row['service']}: {row['step']} lifted by {row['lifted_by']} at "
                f"{row['lifted_at']}: {row['reason']}"
            )

    return faults


def _print_fleet(listed: list[dict[str, Any]], retired: int) -> None:
    active = [r for r in listed if r["state"] in ("free", "in_use")]
    free = sum(r["state"] == "free" for r in active)
    title = f"fleet: {free} of {len(active)} free"
    if retired:
        title += f" ({retired} retired, not shown: --all)"
    table = Table()
    for column in ("id", "name", "state", "held by"):
        table.add_column(column)
    for robot in listed:
        state = robot["state"]
        table.add_row(
            str(robot["id"]),
            robot["name"],
            f"[{STYLES[state]}]{state.replace('_', ' ')}[/]",
            robot["held_by"] or "-",
        )
    console = Console(highlight=False)
    console.print(title, soft_wrap=True)
    console.print(table)
