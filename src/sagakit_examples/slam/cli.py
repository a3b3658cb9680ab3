"""`sagakit robots`: the fleet, each robot with the saga that holds it."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from . import db, fleet


def register_cli(app: typer.Typer) -> None:
    """Add the SLAM example's commands to the `sagakit` CLI."""

    @app.command()
    def robots(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
        """List the robot fleet and which saga holds each robot."""
        engine = db.get_engine()
        db.ensure_schema(engine)
        robots = fleet.list_fleet(engine)
        if as_json:
            typer.echo(json.dumps(robots))
            return
        table = Table(
            title=f"fleet: {sum(r['held_by'] is None for r in robots)} free of {len(robots)}",
            title_justify="left",
        )
        for column in ("id", "name", "held by"):
            table.add_column(column)
        for robot in robots:
            table.add_row(str(robot["id"]), robot["name"], robot["held_by"] or "-")
        Console(highlight=False).print(table)
