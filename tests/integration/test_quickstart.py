"""The README's first command, `make demo`, on a fresh clone of this repository.

A clone holds the committed HEAD, as a newcomer's would: uncommitted changes are not in it.
The end-to-end run installs the package into the clone's own .venv (with pip's settings
from the environment, as test_wheel.py's clean venv does) and takes about a minute, so it
is `slow` (run it with `pytest -m slow tests/integration/test_quickstart.py`); the dry run
of the Makefile, which `make test` runs, checks what the demo would install.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MISSIONS = (
    "a mission that completes",
    "a mission that fails during exploration",
    "a mission that fails during map integration",
)


def clean_env() -> dict[str, str]:
    """A newcomer's shell: no virtualenv of this checkout (on the PATH or active), no make
    of ours around (`make test` runs this), no sagakit settings."""
    venv_bin = Path(sys.executable).parent.resolve()
    path = [
        entry
        for entry in os.environ.get("PATH", "").split(os.pathsep)
        if entry and Path(entry).resolve() != venv_bin
    ]
    dropped = ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME", "MAKEFLAGS", "MAKELEVEL", "MFLAGS")
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in dropped and not key.startswith(("SAGAKIT_", "SLAM_", "POSTGRES_"))
    }
    return {**env, "PATH": os.pathsep.join(path)}


def run(
    *args: str | Path, cwd: Path, env: dict[str, str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(arg) for arg in args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def ok(done: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert done.returncode == 0, f"{done.args}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture
def clone(tmp_path: Path) -> Path:
    """A fresh `git clone` of this repository."""
    if shutil.which("git") is None or shutil.which("make") is None:
        pytest.skip("needs git and make")
    if run("git", "-C", ROOT, "rev-parse", "HEAD", cwd=ROOT, env=clean_env()).returncode:
        pytest.skip(f"{ROOT} is not a git checkout")
    target = tmp_path / "sagakit"
    ok(run("git", "clone", "--quiet", ROOT, target, cwd=tmp_path, env=clean_env()))
    return target


BASE_CLOSURE = """
import importlib.metadata as m, json, re
from pip._vendor.packaging.requirements import Requirement
seen, todo = set(), [("sagakit", ())]
while todo:
    name, extras = todo.pop()
    name = re.sub(r"[-_.]+", "-", name).lower()
    if (name, extras) in seen:
        continue
    seen.add((name, extras))
    for text in m.requires(name) or ():
        req = Requirement(text)
        wanted = [""] + list(extras)
        if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in wanted):
            todo.append((req.name, tuple(sorted(req.extras))))
print(json.dumps(sorted({name for name, _ in seen})))
"""
"""Prints the distributions the base package needs, transitively (no extras)."""


def extra_distributions() -> set[str]:
    """Distribution names of the `api` and `dev` extras: what `make demo` must not install."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = set()
    for extra in ("api", "dev"):
        for requirement in project["optional-dependencies"][extra]:
            match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement)
            assert match, requirement
            names.add(re.sub(r"[-_.]+", "-", match.group(0)).lower())
    return names - {"sagakit"}


def test_make_demo_would_install_the_package_without_its_extras(clone: Path) -> None:
    env = clean_env()

    demo = ok(run("make", "-n", "demo", cwd=clone, env=env)).stdout
    test = ok(run("make", "-n", "test", cwd=clone, env=env)).stdout

    installs = [line for line in demo.splitlines() if " pip install " in line]
    assert len(installs) == 1, demo
    assert shlex.split(installs[0])[-2:] == ["-e", "."], installs[0]
    assert demo.strip().splitlines()[-1] == ".venv/bin/sagakit demo"
    assert "-e '.[dev]'" in test  # the tools come with the tests


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_make_demo_on_a_fresh_clone_runs_the_missions_and_its_next_step_works(
    clone: Path,
) -> None:
    env = clean_env()

    demo = ok(run("make", "demo", f"PYTHON={sys.executable}", cwd=clone, env=env, timeout=420))

    for title in MISSIONS:
        assert title in demo.stdout, demo.stdout[-3000:]
    # The completed missions' maps (orchestrated and choreographed).
    assert len(list((clone / "out" / "maps").glob("*.png"))) == 2
    venv = clone / ".venv"
    assert list(venv.glob(".installed-base-*"))
    assert not list(venv.glob(".installed-dev-*"))
    listed_distributions = ok(
        run(
            venv / "bin" / "python",
            "-c",
            "import importlib.metadata as m, json; "
            "print(json.dumps([d.metadata['Name'] for d in m.distributions()]))",
            cwd=clone,
            env=env,
        )
    )
    installed = {
        re.sub(r"[-_.]+", "-", name).lower() for name in json.loads(listed_distributions.stdout)
    }
    assert "sagakit" in installed
    # What the extras name beyond what the base needs anyway (alembic brings MarkupSafe).
    closure = ok(run(venv / "bin" / "python", "-c", BASE_CLOSURE, cwd=clone, env=env))
    needed = set(json.loads(closure.stdout))
    assert not installed & (extra_distributions() - needed), installed & extra_distributions()

    # The next steps it prints work as printed, from the clone (sagakit is not on the PATH).
    last = demo.stdout.strip().splitlines()[-1]
    assert last.startswith("Next: "), last
    listing, show, start, *rest = re.findall(r"`([^`]+)`", last)
    assert listing == ".venv/bin/sagakit list", last
    sagas = json.loads(ok(run(*shlex.split(listing), "--json", cwd=clone, env=env)).stdout)
    assert sorted(s["status"] for s in sagas) == ["compensated"] * 3 + ["completed"] * 2
    ok(run(*shlex.split(show.replace("ID", sagas[0]["id"])), cwd=clone, env=env))
    started = run(*shlex.split(start), cwd=clone, env=env)
    assert started.returncode == 1, started.stderr  # --fail-at: it compensates (exit 1)
    assert "injected: plan_routes failed" in started.stderr
    [activate] = [command for command in rest if command.endswith("activate")]
    activated = ok(run("bash", "-c", f"{activate} && sagakit list --json", cwd=clone, env=env))
    assert len(json.loads(activated.stdout)) == 6
