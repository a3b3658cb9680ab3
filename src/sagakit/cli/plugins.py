"""Commands added by the modules named in SAGAKIT_IMPORTS (their ``register_cli`` hooks).

Importing those modules is most of what a ``sagakit`` call used to spend starting (the SLAM
example brings Celery, NumPy and Pillow), so the hooks run only when the command line names
a command sagakit does not have itself (``sagakit robots``). ``sagakit --help`` still lists
the added commands: it takes their names and one-line help from a small cache, written each
time the hooks run and kept while SAGAKIT_IMPORTS, the working directory, the interpreter
and the files the commands came from (by size and modification time) stay the same. On a
miss, ``--help`` runs the hooks once and writes the cache.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import typer

CACHE_VERSION = 1
KEEP = 16
"""Entries kept: one per (SAGAKIT_IMPORTS, working directory, interpreter)."""


def cache_file() -> Path:
    """``$XDG_CACHE_HOME/sagakit/cli-commands.json`` (``~/.cache`` by default)."""
    home = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(home) / "sagakit" / "cli-commands.json"


def _key() -> str:
    # The raw variable, not Settings: reading the settings costs pydantic's import, which
    # is most of what `sagakit --help` would spend. The same text always means the same list.
    imports = os.environ.get("SAGAKIT_IMPORTS")
    return json.dumps([CACHE_VERSION, imports, os.getcwd(), sys.executable])


def command_names(app: typer.Typer) -> set[str]:
    """The names of the commands and groups registered on `app` so far."""
    from typer.main import get_command_name

    names = {
        info.name or get_command_name(info.callback.__name__)
        for info in app.registered_commands
        if info.callback is not None
    }
    names |= {info.name for info in app.registered_groups if info.name}
    return names


def run_hooks(app: typer.Typer, modules: Sequence[str]) -> None:
    """Run the ``register_cli`` hooks of `modules` on `app` and remember what they added."""
    from ..registry import hooks

    before = command_names(app)
    found = hooks(modules, "register_cli")
    for hook in found:
        hook(app)
    if all(name in sys.modules for name in modules):  # else: retried until they import
        _remember(app, command_names(app) - before, [*modules, *(h.__module__ for h in found)])


def add_remembered(app: typer.Typer) -> bool:
    """Register help-only stand-ins for the commands the hooks added last time.

    Returns False when nothing usable is remembered (the hooks must run).
    """
    entry = _read().get(_key())
    if not isinstance(entry, dict) or "commands" not in entry:
        return False
    if not _unchanged(entry.get("files", {})):
        return False
    for command in entry.get("commands", []):
        _stand_in(app, command)
    return True


def _stand_in(app: typer.Typer, command: dict[str, Any]) -> None:
    def stand_in() -> None:  # never runs: naming the command runs the real hooks
        raise typer.Exit(2)

    app.command(
        command["name"],
        help=command.get("help"),
        short_help=command.get("short_help"),
        hidden=bool(command.get("hidden")),
        rich_help_panel=command.get("panel"),
    )(stand_in)


def _remember(app: typer.Typer, added: set[str], modules: list[str]) -> None:
    """Write down the added commands and the files they come from."""
    from typer.main import get_command

    group: Any = get_command(app)
    commands = []
    sources = set(modules)
    for name in sorted(added, key=list(group.commands).index):
        cmd = group.commands[name]
        commands.append(
            {
                "name": name,
                "help": _text(cmd.help),
                "short_help": _text(cmd.short_help),
                "hidden": bool(cmd.hidden),
                "panel": _text(getattr(cmd, "rich_help_panel", None)),
            }
        )
        sources |= {_module_of(callback) for callback in _callbacks(cmd)}
    files = {}
    for module in sorted(m for m in sources if m):
        path = getattr(sys.modules.get(module), "__file__", None)
        if path:
            files[path] = _stamp(path)
    _write({"files": files, "commands": commands})


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None  # typer's unset markers are not text


def _callbacks(cmd: Any) -> list[Any]:
    found = [cmd.callback] if getattr(cmd, "callback", None) else []
    for sub in getattr(cmd, "commands", {}).values():
        found.extend(_callbacks(sub))
    return found


def _module_of(callback: Any) -> str:
    return str(getattr(callback, "__module__", "") or "")


def _stamp(path: str) -> list[int] | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return [stat.st_mtime_ns, stat.st_size]


def _unchanged(files: dict[str, Any]) -> bool:
    return all(_stamp(path) == stamp for path, stamp in files.items())


def _read() -> dict[str, Any]:
    try:
        data = json.loads(cache_file().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write(entry: dict[str, Any]) -> None:
    """Store `entry` for this key; a cache that cannot be written is only a slower --help."""
    path = cache_file()
    data = _read()
    data.pop(_key(), None)
    data[_key()] = entry  # newest last; the oldest go beyond KEEP
    data = dict(list(data.items())[-KEEP:])
    try:
        text = json.dumps(data)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f"{path.name}.{os.getpid()}")
        temporary.write_text(text)
        os.replace(temporary, path)
    except (OSError, TypeError, ValueError):
        pass
