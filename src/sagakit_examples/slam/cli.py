"""`sagakit robots`: list the fleet; `sagakit robots add` and `retire` change it."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import sqlalchemy as sa
import typer
from rich.console import Console
from rich.table import Table

from . import fleet
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
