"""`sagakit demo`: SLAM missions on the embedded default, with their timelines: three
orchestrated, then two choreographed (the services reacting to each other's events)."""

from __future__ import annotations

import logging
import shutil
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Annotated, Any

import typer

from ..core.errors import SagaError

MISSIONS: list[tuple[str, dict[str, Any], str]] = [
    ("a mission that completes", {}, "completed"),
    ("a mission that fails during exploration", {"fail_at": "explore"}, "compensated"),
    ("a mission that fails during map integration", {"fail_at": "integrate_maps"}, "compensated"),
]


def register(app: typer.Typer) -> None:
    """Add `demo` to `app`."""

    @app.command()
    def demo(
        robots: Annotated[int, typer.Option(min=1, max=16)] = 3,
        area: Annotated[str, typer.Option()] = "warehouse",
        timeout: Annotated[float, typer.Option(help="Seconds per mission.")] = 120.0,
    ) -> None:
        """Run SLAM missions, orchestrated then choreographed (some complete, some
        compensate), and show each timeline."""
        from rich.rule import Rule

        from ..logs import configure_logging
        from . import render
        from .sagas import open_system

        configure_logging("WARNING")
        # Injected failures are expected here: keep Celery's tracebacks out of the demo.
        logging.getLogger("celery.app.trace").setLevel(logging.CRITICAL)
        console = render.console()
        outcomes: list[bool] = []
        with ExitStack() as stack:
            system = open_system(stack, worker=True)
            engine = system.engine
            where = (
                "embedded (SQLite + in-process worker)"
                if system.settings.embedded
                else "configured broker and database"
            )
            console.print(f"sagakit demo: saga log {system.settings.database_url}, {where}")
            for title, extra, expected in MISSIONS:
                console.print(Rule(title))
                data = {"robots": robots, "area": area, **extra}
                saga_id = engine.start("slam", data).saga_id
                system.queries.wait(saga_id, timeout=timeout)
                view = system.queries.detail(saga_id)
                console.print(
                    render.saga(view, with_history=False, with_outputs=False, width=console.width)
                )
                _explain(console, view)
                outcomes.append(view["status"] == expected)
            outcomes += _choreographed(system, robots, area, timeout, console)
        if not all(outcomes):
            raise SagaError("a demo mission did not end as expected; see the timelines above")
        console.print(Rule())
        sagakit, activate = how_to_run_sagakit()
        console.print(
            f"Next: `{sagakit} list`, `{sagakit} show ID`, `{sagakit} run slam --robots 2 "
            f"--area lab --fail-at plan_routes --wait`{activate}.",
            soft_wrap=True,
        )


CHOREOGRAPHED: list[tuple[str, dict[str, Any], str]] = [
    ("the mission choreographed: services react to events", {}, "completed"),
    ("choreographed, failing during exploration", {"fail_at": "explore"}, "compensated"),
]


def _choreographed(system: Any, robots: int, area: str, timeout: float, console: Any) -> list[bool]:
    """Run the choreographed missions, the tracker and the participants as threads here
    (on an in-process stream unless SAGAKIT_REDIS_URL names a Redis)."""
    from rich.rule import Rule

    from ..choreography import Choreography
    from . import render

    choreography = Choreography(system.settings, embedded=True)
    outcomes = []
    with choreography.threads():
        for title, extra, expected in CHOREOGRAPHED:
            console.print(Rule(title))
            saga_id = choreography.start("slam", {"robots": robots, "area": area, **extra})
            system.queries.wait(saga_id, timeout=timeout)
            view = system.queries.detail(saga_id)
            console.print(
                render.saga(view, with_history=False, with_outputs=False, width=console.width)
            )
            _explain(console, view)
            outcomes.append(view["status"] == expected)
    return outcomes


def how_to_run_sagakit() -> tuple[str, str]:
    """The command that runs this sagakit again, as typed here, and how to shorten it.

    ``sagakit`` when the shell finds this very entry point; otherwise its path (relative
    when under the working directory, as ``.venv/bin/sagakit`` after ``make demo``) and the
    virtualenv's activate script, which puts it on the PATH.
    """
    mine = Path(sys.argv[0])
    if mine.name != "sagakit" or not mine.exists():
        mine = Path(sys.executable).parent / "sagakit"
    found = shutil.which("sagakit")
    if found and Path(found).resolve() == mine.resolve():
        return "sagakit", ""
    here = Path.cwd().resolve()
    where = mine.resolve().parent
    shown = str(mine.resolve())
    if where.is_relative_to(here):
        shown = str(mine.resolve().relative_to(here))
    activate = where / "activate"
    if not activate.exists():
        return shown, ""
    script = activate.relative_to(here) if where.is_relative_to(here) else activate
    return shown, f" (or `. {script}` first, then just `sagakit ...`)"


def _explain(console: Any, view: dict[str, Any]) -> None:
    undone = [h["step"] for h in view["history"] if h["event"] == "step_compensated"]
    if undone:
        console.print("compensated in reverse order: " + " <- ".join(undone))
    for step in view["steps"]:
        output = step.get("output") or {}
        if isinstance(output, dict) and output.get("map_path"):
            console.print(
                f"map of the explored world: {output['map_path']} "
                f"(coverage {output.get('coverage', 0):.1%}, "
                f"accuracy {output.get('accuracy', 0):.1%})"
            )
