"""The `sagakit` command line: thin shells over the same engine the API uses.

Every command module imports only typer and the standard library at the top; what a command
needs (SQLAlchemy, Celery, the modules named by SAGAKIT_IMPORTS, FastAPI) is imported when
it runs, so ``sagakit --help`` and ``sagakit list`` do not pay for the others.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import typer

from ..core.errors import SagaError

EXIT_STATUS = (
    "Exit status: 0 done; 1 the saga did not complete (run --wait) or the worker did not "
    "answer (ping); 2 bad input, option or setting; 3 the database or the broker is "
    "unreachable; 130 interrupted (Ctrl-C)."
)

app = typer.Typer(
    name="sagakit",
    help="Durable sagas on Celery: run, inspect and operate sagas.",
    epilog=EXIT_STATUS,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _register_commands(argv: list[str] | None = None) -> None:
    """Add every command; the hooks' ones for real unless `argv` does not need them."""
    from . import bench, choreography, demo, ping, plugins, processes, prune, sagas, up

    sagas.register(app)
    processes.register(app)
    demo.register(app)
    bench.register(app)
    up.register(app)
    ping.register(app)
    prune.register(app)
    choreography.register(app)
    # Modules named by SAGAKIT_IMPORTS may add commands (e.g. `sagakit robots`); they are
    # imported only for a command sagakit does not have, or for a --help not remembered.
    if argv is not None:
        named = next((arg for arg in argv if not arg.startswith("-")), None)
        if named in plugins.command_names(app):
            return
        if named is None and plugins.add_remembered(app):
            return
    try:
        from ..settings import load_settings

        modules = load_settings().imports
    except Exception:
        return
    plugins.run_hooks(app, modules)


def _error(message: str, code: int) -> SystemExit:
    from rich.markup import escape

    from . import render

    render.console(stderr=True).print(
        f"[bold red]error:[/] {escape(message)}",
        markup=True,
        highlight=False,
        soft_wrap=True,  # one line, whatever the terminal's width
    )
    return SystemExit(code)


def _settings() -> Any:
    try:
        from ..settings import load_settings

        return load_settings()
    except Exception:
        return None


def _settings_problem(exc: Exception) -> str | None:
    """The first lines of a settings error (pydantic's), or None for any other error."""
    # Only pydantic raises these, and only once it has been imported.
    named = (("pydantic_core", "ValidationError"), ("pydantic_settings", "SettingsError"))
    kinds = tuple(
        cls
        for module, name in named
        if isinstance(cls := getattr(sys.modules.get(module), name, None), type)
    )
    if not kinds or not isinstance(exc, kinds):
        return None
    first = str(exc).strip().splitlines()
    return " ".join(first[:3])


def main() -> None:
    """Run the CLI; errors become one line on stderr with the exit status in EXIT_STATUS."""
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    _register_commands(sys.argv[1:])
    try:
        app()
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    except Exception as exc:
        from ..outages import EXIT_UNREACHABLE, unreachable

        if unreachable(exc) is not None:  # the settings only name what is unreachable
            raise _error(str(unreachable(exc, _settings())), EXIT_UNREACHABLE) from None
        if isinstance(exc, SagaError):
            raise _error(str(exc), 2) from None
        problem = _settings_problem(exc)
        if problem is not None:
            raise _error(f"settings: {problem}", 2) from None
        raise
