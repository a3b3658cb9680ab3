"""Panels an application adds to the dashboard (its ``register_dashboard`` hook).

A module named by ``SAGAKIT_IMPORTS`` may define ``register_dashboard(dashboard)`` and call
`Dashboard.add_panel` there, as ``register_api`` adds routes. A panel is a Jinja template
(rendered with the dashboard's autoescaping environment, so every value it shows is
escaped) and a function that gives the template its values: on the ``sagas`` and
``health`` pages it takes no argument, on a ``saga`` page it takes the saga's detail view
(`sagakit.queries.saga_view`) and returns None where the panel does not apply.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from markupsafe import Markup

Where = Literal["sagas", "saga", "health"]
Context = Callable[..., Mapping[str, Any] | None]
logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Panel:
    """One panel: where it shows, its title, its template and what fills it."""

    where: Where
    title: str
    template: str
    context: Context


@dataclass(frozen=True, slots=True)
class Rendered:
    """A panel ready for the page."""

    title: str
    html: Markup


@dataclass
class Dashboard:
    """The panels registered by the applications."""

    panels: list[Panel] = field(default_factory=list)

    def add_panel(self, where: Where, title: str, template: str, context: Context) -> None:
        """Show `template`, filled by `context`, on the `where` pages.

        Raises:
            ValueError: `where` is not ``sagas``, ``saga`` or ``health``.
        """
        if where not in ("sagas", "saga", "health"):
            raise ValueError(f"where: {where!r} is not one of 'sagas', 'saga', 'health'")
        self.panels.append(Panel(where, title, template, context))

    def render(self, where: Where, env: Any, *args: Any) -> list[Rendered]:
        """The panels of `where` that apply, rendered; a panel that fails says so."""
        shown = []
        for panel in self.panels:
            if panel.where != where:
                continue
            try:
                values = panel.context(*args)
                if values is None:
                    continue
                html = Markup(env.from_string(panel.template).render(**values))
            except Exception as exc:
                logger.exception("dashboard panel %r failed", panel.title)
                html = Markup('<p class="muted">This panel could not be shown: {}</p>').format(
                    f"{type(exc).__name__}: {exc}"
                )
            shown.append(Rendered(panel.title, html))
        return shown
