"""The `sagakit` command line: thin shells over the same engine the API uses."""

from __future__ import annotations

import sys

import typer
from pydantic import ValidationError
from pydantic_settings import SettingsError
from rich.markup import escape

from ..core.errors import SagaError
from ..registry import hooks
from ..settings import load_settings
from . import render

app = typer.Typer(
    name="sagakit",
    help="Durable sagas on Celery: run, inspect and operate sagas.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _register_commands() -> None:
    from . import bench, demo, ping, processes, prune, sagas, up

    sagas.register(app)
    processes.register(app)
    demo.register(app)
    bench.register(app)
    up.register(app)
    ping.register(app)
    prune.register(app)
    # Modules named by SAGAKIT_IMPORTS may add commands (e.g. `sagakit robots`).
    try:
        modules = load_settings().imports
    except Exception:
        return
    for hook in hooks(modules, "register_cli"):
        hook(app)


def main() -> None:
    """Run the CLI; sagakit's own errors become one line on stderr and exit code 2."""
    import os

    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    _register_commands()
    try:
        app()
    except SagaError as exc:
        render.console(stderr=True).print(
            f"[bold red]error:[/] {escape(str(exc))}",
            markup=True,
            highlight=False,
            soft_wrap=True,  # one line, whatever the terminal's width
        )
        raise SystemExit(2) from None
    except (SettingsError, ValidationError) as exc:
        first = str(exc).strip().splitlines()
        text = escape(" ".join(first[:3]))
        render.console(stderr=True).print(
            f"[bold red]error:[/] settings: {text}", markup=True, highlight=False, soft_wrap=True
        )
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        raise SystemExit(130) from None
