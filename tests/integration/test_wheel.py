"""The built wheel, installed in a clean virtualenv, runs `sagakit demo` outside the checkout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


def run(*args: str | Path, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [str(arg) for arg in args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=420,
        check=False,
    )
    assert done.returncode == 0, f"{args}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def clean_env() -> dict[str, str]:
    """The environment without this checkout's venv, Python path or sagakit settings."""
    dropped = ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")
    return {
        key: value
        for key, value in os.environ.items()
        if key not in dropped and not key.startswith(("SAGAKIT_", "SLAM_", "POSTGRES_"))
    }


def test_the_installed_wheel_runs_the_demo(tmp_path: Path) -> None:
    env = clean_env()
    dist = tmp_path / "dist"
    run(
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "-q",
        "-w",
        dist,
        ROOT,
        cwd=tmp_path,
        env=env,
    )
    (wheel,) = dist.glob("sagakit-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "sagakit_examples/slam/steps.py" in names
    assert not [name for name in names if name.startswith(("tests/", "examples/"))]

    venv = tmp_path / "venv"  # a new, empty environment; this checkout's pip fills it
    run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=tmp_path, env=env)
    python = venv / "bin" / "python"
    run(
        sys.executable,
        "-m",
        "pip",
        "--python",
        python,
        "install",
        "-q",
        wheel,
        cwd=tmp_path,
        env=env,
    )
    work = tmp_path / "work"
    work.mkdir()
    where = run(
        python,
        "-c",
        "import sagakit, sagakit_examples.slam as m; print(sagakit.__file__); print(m.__file__)",
        cwd=work,
        env=env,
    )
    assert all(Path(line).is_relative_to(venv) for line in where.stdout.split()), where.stdout

    demo = run(venv / "bin" / "sagakit", "demo", cwd=work, env=env)

    assert "a mission that completes" in demo.stdout
    maps = list((work / "out" / "maps").glob("*.png"))
    # One map per completed mission (orchestrated, choreographed); the compensated left none.
    assert len(maps) == 2, demo.stdout[-3000:]
    assert all(m.read_bytes().startswith(b"\x89PNG\r\n\x1a\n") for m in maps)
    assert (work / "sagakit.db").exists()

    # The next step it prints works as printed (sagakit is not on the PATH here).
    last = demo.stdout.strip().splitlines()[-1]
    listing = last.split("`")[1]
    assert listing == f"{(venv / 'bin' / 'sagakit').resolve()} list", last
    listed = run(*listing.split(), "--json", cwd=work, env=env)
    assert len(json.loads(listed.stdout)) == 5

    # Without the api extra, the API is refused in one line.
    api = subprocess.run(
        [venv / "bin" / "sagakit", "api"], cwd=work, env=env, capture_output=True, text=True
    )
    assert api.returncode == 2
    assert api.stderr.strip().splitlines() == [
        "error: sagakit api needs the api extra (fastapi, uvicorn not installed): "
        "pip install 'sagakit[api]' (make install in a checkout)"
    ]
