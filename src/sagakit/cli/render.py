"""Rich rendering of sagas for the terminal."""

from __future__ import annotations

import json
import os
from datetime import datetime
from typing import Any

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

STATUS_STYLE = {
    "pending": "dim",
    "running": "cyan",
    "compensating": "yellow",
    "completed": "green",
    "compensated": "magenta",
    "failed": "bold red",
    "succeeded": "green",
    "compensation_failed": "bold red",
    "scheduled": "dim",
    "timed_out": "red",
}


def styled(status: str | None) -> Text:
    """A status word in its colour."""
    return Text(status or "-", style=STATUS_STYLE.get(status or "", ""))


def _clock(value: str | None) -> str:
    if not value:
        return "-"
    return datetime.fromisoformat(value).strftime("%H:%M:%S.%f")[:-3]


def _secs(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}s"


def header(view: dict[str, Any]) -> Text:
    """One line: id, type, status, duration, reason."""
    text = Text.assemble(
        ("saga ", "bold"),
        (view["id"], "bold"),
        f"  {view['type']}  ",
        styled(view["status"]),
        f"  {_secs(view.get('duration'))}",
    )
    if view.get("choreographed"):
        text.append("  (choreographed)", style="cyan")
    if view.get("reason"):
        text.append(f"\n  reason: {view['reason']}", style="italic")
    if view.get("definition_deployed") is False:
        text.append(f"\n  {not_deployed(view)}", style="bold yellow")
    return text


def not_deployed(view: dict[str, Any]) -> str:
    """What a saga whose definition version no live worker has is waiting for."""
    return (
        f"definition {view['type']} v{view['definition_version']} is not deployed: no live "
        "worker can advance this saga; it waits until that version runs again"
    )


WIDE = 150
"""Below this many columns the timeline leaves out start, end, worker and task id."""


def timeline(view: dict[str, Any], width: int = WIDE) -> Table:
    """Every attempt of every action and compensation, in the order they were scheduled."""
    wide = width >= WIDE
    table = Table(title="timeline", title_justify="left", expand=False)
    short = [("step", 8), ("kind", 10), ("#", 2), ("status", 11)]
    if wide:
        short += [("start", 12), ("end", 12)]
    for column, min_width in [*short, ("took", 7)]:
        table.add_column(column, no_wrap=True, min_width=min_width)
    # Narrow terminals get the error but not worker and task id (see --json or a wider one).
    for column in ("worker", "task id", "error") if wide else ("error",):
        table.add_column(column, overflow="fold", max_width=48)
    rows = []
    for step in view["steps"]:
        for attempt in step["attempts"] + step["compensations"]:
            rows.append((attempt["scheduled_at"] or "", step["name"], attempt))
    for _, name, a in sorted(rows, key=lambda row: row[0]):
        kind = "action" if a["direction"] == "action" else "compensate"
        cells: list[Any] = [name, kind, str(a["attempt"]), styled(a["status"])]
        if wide:
            cells += [_clock(a["started_at"]), _clock(a["finished_at"])]
        cells.append(_secs(a["duration"]))
        if wide:
            eager = " (in its carrier's delivery)" if a.get("carried_by") else ""
            cells += [a["worker"] or "-", a["task_id"] + eager]
        cells.append((a["error"] or "")[:80])
        table.add_row(*cells)
    return table


def history(view: dict[str, Any]) -> Table:
    """The transition history."""
    table = Table(title="history", title_justify="left")
    for column in ("at", "event", "step", "#", "status"):
        table.add_column(column)
    for h in view["history"]:
        status = h["to"] if h["from"] == h["to"] else f"{h['from'] or '-'} -> {h['to'] or '-'}"
        table.add_row(
            _clock(h["at"]),
            h["event"],
            h["step"] or "",
            str(h["attempt"] or ""),
            status if h["to"] else "",
        )
    return table


PATH_KEYS = ("path", "file", "dir", "directory")
"""An output key ending in one of these names a file: its value is shown in full."""
SHORT = 60
"""Longest value shown as it is; longer ones are cut (files excepted)."""


def outputs(view: dict[str, Any]) -> Table | None:
    """What each completed step returned: one row per key, files in full, the rest short."""
    table = Table(title="outputs", title_justify="left")
    table.add_column("step", no_wrap=True)
    table.add_column("key", no_wrap=True)
    table.add_column("value", overflow="fold")
    rows = 0
    for step in view["steps"]:
        output = step.get("output")
        if output is None:  # not completed, or returned nothing
            continue
        name = step["name"]
        if step.get("status") != "succeeded":  # completed, then undone
            name = f"{name} ({step.get('status')})"
        items = output.items() if isinstance(output, dict) else [("-", output)]
        for index, (key, value) in enumerate(items):
            table.add_row(name if index == 0 else "", str(key), brief(str(key), value))
            rows += 1
    return table if rows else None


def brief(key: str, value: Any) -> str:
    """A value in a few words; a file path in full."""
    if isinstance(value, str):
        if is_path(key, value) or len(value) <= SHORT:
            return value
        return f"{value[: SHORT - 10]}... ({len(value)} characters)"
    text = json.dumps(value, default=str)
    if len(text) <= SHORT:
        return text
    if isinstance(value, dict):
        keys = ", ".join(str(k) for k in list(value)[:5])
        return f"{{{len(value)} keys: {keys}{', ...' if len(value) > 5 else ''}}}"
    if isinstance(value, list):
        return f"[{len(value)} items]"
    return f"{text[: SHORT - 3]}..."


def is_path(key: str, value: str) -> bool:
    """Whether an output value names a file or directory (by its key, or because it exists)."""
    if key.lower().endswith(PATH_KEYS):
        return True
    return os.sep in value and "\n" not in value and os.path.exists(value)


def saga(
    view: dict[str, Any],
    *,
    with_history: bool = True,
    with_outputs: bool = True,
    width: int = WIDE,
) -> Group:
    """Header, timeline, (optionally) the steps' outputs and the history of one saga."""
    parts: list[Any] = [header(view), timeline(view, width)]
    produced = outputs(view) if with_outputs else None
    if produced is not None:
        parts.append(produced)
    if with_history:
        parts.append(history(view))
    return Group(*parts)


def listing(views: list[dict[str, Any]]) -> Table:
    """A table of sagas."""
    table = Table()
    if any(v.get("choreographed") for v in views):
        table.caption = "* choreographed: folded from its events by the tracker"
    for column in ("id", "type", "status", "created", "took", "reason"):
        table.add_column(column, overflow="fold")
    for v in views:
        table.add_row(
            v["id"],
            (f"{v['type']}*" if v.get("choreographed") else v["type"])
            + (
                f" v{v['definition_version']} not deployed"
                if v.get("definition_deployed") is False
                else ""
            ),
            styled(v["status"]),
            v["created_at"][:23],
            _secs(v["duration"]),
            (v["reason"] or "")[:70],
        )
    return table


def progress(view: dict[str, Any]) -> Table:
    """Live view of a saga's steps while it runs."""
    table = Table(
        title=f"saga {view['id']} ({view['type']}): {view['status']}", title_justify="left"
    )
    for column in ("step", "status", "attempts", "compensations"):
        table.add_column(column)
    for step in view["steps"]:
        table.add_row(
            step["name"],
            styled(step["status"]),
            str(len(step["attempts"])),
            str(len(step["compensations"])),
        )
    return table


def console(*, stderr: bool = False) -> Console:
    """A console that degrades to plain text when not a terminal."""
    import sys

    stream = sys.stderr if stderr else sys.stdout
    width = None if stream.isatty() else 200
    return Console(stderr=stderr, highlight=False, soft_wrap=False, width=width)
