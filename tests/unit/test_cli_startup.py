"""What a `sagakit` call imports: only what its command needs (read with -X importtime).

-X importtime does not report a module imported through importlib.import_module itself,
only what it imports: the SLAM package is seen by its steps module.

`--help` and `list` must not pay for Celery or the modules named by SAGAKIT_IMPORTS, and
`--help` still lists the commands those modules add, from a cache that follows their files.
`list` and `show` read the log on the driver's own connection: no SQLAlchemy, and no
pydantic-settings (pydantic itself comes with typer, which checks options with it). How
long these take is measured by scripts/cli-startup, by hand: timings are not tests.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.cluster import ROOT, SAGAKIT
from tests.support.rig import Rig


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "SAGAKIT_DATABASE_URL": f"sqlite:///{tmp_path}/startup.db",
        "SAGAKIT_IMPORTS": "sagakit_examples.slam",
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
    }


def call(
    env: dict[str, str], *args: str, cwd: Path = ROOT
) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """Run the installed entry point; its result and the modules it imported."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", SAGAKIT, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    modules = {
        line.rsplit("|", 1)[-1].strip()
        for line in done.stderr.splitlines()
        if line.startswith("import time:")
    }
    return done, modules


HEAVY = ("celery", "kombu", "sqlalchemy", "alembic", "fastapi", "numpy", "sagakit_examples")
READS = (*HEAVY, "pydantic_settings", "sagakit.settings", "sagakit.system", "sagakit.engine")
"""Nor do the commands that only read need the settings' model or the engine."""
HELP = (*READS, "pydantic", "sqlite3", "psycopg", "sagakit.queries", "sagakit.store")
"""`--help` reads nothing."""


def heavy(modules: set[str], names: tuple[str, ...] = HEAVY) -> set[str]:
    return {m for m in modules if m in names or m.startswith(tuple(f"{n}." for n in names))}


def test_help_lists_the_added_commands_without_importing_them_once_remembered(
    env: dict[str, str], tmp_path: Path
) -> None:
    first, modules = call(env, "--help")
    assert first.returncode == 0, first.stderr[-2000:]
    assert "robots" in first.stdout
    assert "sagakit_examples.slam.steps" in modules  # nothing remembered yet: the hooks ran
    assert (tmp_path / "cache" / "sagakit" / "cli-commands.json").exists()

    again, modules = call(env, "--help")
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout == first.stdout
    assert heavy(modules, HELP) == set()


def test_list_reads_a_log_never_migrated_without_sqlalchemy_or_the_settings_model(
    env: dict[str, str],
) -> None:
    done, modules = call(env, "list", "--json")
    assert (done.returncode, done.stdout.strip()) == (0, "[]"), done.stderr[-2000:]
    assert "sqlite3" in modules
    assert heavy(modules, (*READS, "psycopg")) == set()

    missing, modules = call(env, "show", "0123456789abcdef")
    assert missing.returncode == 2, missing.stderr[-2000:]
    assert "no saga with id '0123456789abcdef'" in missing.stderr
    assert heavy(modules, (*READS, "psycopg")) == set()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def log_url(request: pytest.FixtureRequest, tmp_path: Path, pg_databases: Callable[[], str]) -> str:
    if request.param == "postgres":
        return pg_databases()
    return f"sqlite:///{tmp_path}/startup.db"


def test_list_and_show_render_a_saga_without_sqlalchemy_or_the_settings_model(
    env: dict[str, str], log_url: str
) -> None:
    rig = Rig(log_url)
    saga_id = rig.engine.start("two", {"n": 1}).saga_id
    rig.engine.log.db.dispose()
    rig.db.dispose()
    env = {**env, "SAGAKIT_DATABASE_URL": log_url}
    driver = "psycopg" if log_url.startswith("postgresql") else "sqlite3"

    listed, modules = call(env, "list")
    assert listed.returncode == 0, listed.stderr[-2000:]
    assert saga_id in listed.stdout
    assert driver in modules
    assert heavy(modules, READS) == set()

    shown, modules = call(env, "show", saga_id)
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert f"saga {saga_id}" in shown.stdout
    assert heavy(modules, READS) == set()


def test_a_named_added_command_runs_its_hooks(env: dict[str, str]) -> None:
    done, modules = call(env, "robots", "--help")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Add robots to the fleet" in done.stdout
    assert "sagakit_examples.slam.steps" in modules


HOOKS = """
import sys

import typer

sys.stderr.write("myhooks imported\\n")


def register_cli(app: typer.Typer) -> None:
    @app.command(help="{help}")
    def {name}() -> None:
        typer.echo("{name} ran")
"""


def test_help_follows_the_hooks_when_their_file_changes(
    env: dict[str, str], tmp_path: Path
) -> None:
    project = tmp_path / "project"
    project.mkdir()
    module = project / "myhooks.py"
    env = {**env, "SAGAKIT_IMPORTS": "myhooks"}
    module.write_text(HOOKS.format(name="hello", help="Say hello."))
    first, _ = call(env, "--help", cwd=project)
    assert "Say hello." in first.stdout, first.stderr[-2000:]
    assert "myhooks imported" in first.stderr
    remembered, _ = call(env, "--help", cwd=project)
    assert "Say hello." in remembered.stdout
    assert "myhooks imported" not in remembered.stderr

    module.write_text(HOOKS.format(name="goodbye", help="Say goodbye, at length."))
    changed, _ = call(env, "--help", cwd=project)
    assert "Say goodbye, at length." in changed.stdout
    assert "Say hello." not in changed.stdout
    assert "myhooks imported" in changed.stderr
    ran, _ = call(env, "goodbye", cwd=project)
    assert ran.stdout.strip() == "goodbye ran"
