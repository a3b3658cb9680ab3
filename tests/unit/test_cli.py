"""The `sagakit` command line, run as a user would run it (embedded default)."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SAGAKIT = str(Path(sys.executable).parent / "sagakit")


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "SAGAKIT_DATABASE_URL": f"sqlite:///{tmp_path}/cli.db",
        "SAGAKIT_IMPORTS": "tests.support.workload",
        "SAGAKIT_SWEEP_INTERVAL": "0.2",
        "XDG_CACHE_HOME": str(tmp_path / "cache"),  # the CLI's cache of the hooks' commands
    }


def sagakit(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SAGAKIT, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_run_list_show_round_trip(env: dict[str, str]) -> None:
    ran = sagakit(env, "run", "linear", "--wait", "--json")
    assert ran.returncode == 0, ran.stderr
    saga_id = json.loads(ran.stdout)["id"]

    failed = sagakit(env, "run", "linear", "--input", '{"faults": {"c": ["fail"]}}', "--wait")
    assert failed.returncode == 1
    assert "compensated" in failed.stdout

    listed = json.loads(sagakit(env, "list", "--json").stdout)
    assert [s["status"] for s in listed] == ["compensated", "completed"]

    shown = json.loads(sagakit(env, "show", saga_id, "--json").stdout)
    assert (shown["id"], shown["type"], shown["status"]) == (saga_id, "linear", "completed")
    assert [s["name"] for s in shown["steps"]] == ["a", "b", "c", "d"]
    assert all(len(s["attempts"]) == 1 for s in shown["steps"])
    assert {"event", "step", "at"} <= set(shown["history"][0])
    assert [h["event"] for h in shown["history"]][-2:] == ["step_completed", "saga_completed"]

    text = sagakit(env, "show", saga_id)
    assert "timeline" in text.stdout
    assert f"{saga_id}.04.d.fwd.1" in text.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "nosuch"], "unknown saga type 'nosuch'"),
        (["run", "linear@2"], "saga type 'linear' version 2 is not deployed here (deployed: v1)"),
        (["run", "linear@x"], "TYPE: 'linear@x': the version after @ must be a positive integer"),
        (["show", "not an id!"], "is not a saga id"),
        (["show", "0123456789abcdef"], "no saga with id '0123456789abcdef'"),
        (["cancel", "0123456789abcdef"], "no saga with id"),
        (["run", "linear", "--input", "{oops"], "--input: not valid JSON"),
        (["list", "--status", "weird"], "'weird' is not one of"),
        (["bench", "--steps", "99"], "--steps: at most 8"),
    ],
)
def test_bad_input_is_one_line_without_traceback(
    env: dict[str, str], args: list[str], message: str
) -> None:
    result = sagakit(env, *args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_retry_of_a_saga_that_did_not_fail_is_refused(env: dict[str, str]) -> None:
    saga_id = json.loads(sagakit(env, "run", "linear", "--wait", "--json").stdout)["id"]
    result = sagakit(env, "retry", saga_id)
    assert result.returncode == 2
    assert "only a failed saga can be retried" in result.stderr


def test_bench_runs_sagas_and_reports_percentiles(env: dict[str, str]) -> None:
    result = sagakit(env, "bench", "--sagas", "6", "--steps", "3", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert (report["sagas"], report["steps"], report["completed"]) == (6, 3, 6)
    assert report["unfinished"] == 0
    assert 0 < report["p50_ms"] <= report["p90_ms"] <= report["p99_ms"]
    assert report["sagas_per_second"] > 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--robots", "0", "--area", "lab"], "input.robots: Input should be greater than or equal"),
        (["--robots", "2", "--area", "lab", "--fail-at", "nope"], "unknown step 'nope'"),
        (["--robots", "2", "--area", "no spaces"], "input.area: String should match pattern"),
        (
            ["--robots", "2", "--area", "lab", "--robot-wait", "-1"],
            "input.robot_wait: Input should",
        ),
        (
            ["--robots", "2", "--area", "lab", "--robot-wait", "9999"],
            "input.robot_wait: Input should",
        ),
    ],
)
def test_bad_mission_input_is_one_line(env: dict[str, str], args: list[str], message: str) -> None:
    result = sagakit({**env, "SAGAKIT_IMPORTS": "sagakit_examples.slam"}, "run", "slam", *args)
    assert result.returncode == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_the_slam_example_adds_its_fleet_commands(env: dict[str, str]) -> None:
    env = {**env, "SAGAKIT_IMPORTS": "sagakit_examples.slam", "SLAM_FLEET_SIZE": "2"}
    added = sagakit(env, "robots", "add", "1")
    assert (added.returncode, added.stdout.strip()) == (0, "added scout-03"), added.stderr
    listed = json.loads(sagakit(env, "robots", "--json").stdout)
    assert [(r["name"], r["state"]) for r in listed] == [
        ("scout-01", "free"),
        ("scout-02", "free"),
        ("scout-03", "free"),
    ]


def _row(text: str, option: str) -> str:
    return next(line for line in text.splitlines() if line.startswith(f"│ {option} "))


def test_run_help_lists_the_saga_types_input_fields(env: dict[str, str]) -> None:
    result = sagakit({**env, "SAGAKIT_IMPORTS": "sagakit_examples.slam"}, "run", "slam", "--help")
    assert result.returncode == 0, result.stderr
    assert "Usage: sagakit run" in result.stdout  # the command's own help comes first
    robots = _row(result.stdout, "--robots")
    for cell in ("integer", "required", "1 to 16", "Robots to send"):
        assert cell in robots
    assert "0.0 to 600.0" in _row(result.stdout, "--robot-wait")
    assert "object (JSON)" in _row(result.stdout, "--faults")


def test_run_help_of_a_type_without_a_model_says_so(env: dict[str, str]) -> None:
    result = sagakit(env, "run", "linear", "--help")
    assert result.returncode == 0, result.stderr
    assert "linear declares no input model" in result.stdout


def test_an_object_field_is_given_as_json(env: dict[str, str]) -> None:
    env = {**env, "SAGAKIT_IMPORTS": "sagakit_examples.slam"}
    args = ["--robots", "2", "--area", "lab", "--faults", '{"fail_at": "nowhere"}']
    result = sagakit(env, "run", "slam", *args)
    assert result.returncode == 2
    # Read as an object: the model checks the step it names.
    assert "input.faults.fail_at: Value error, unknown step 'nowhere'" in result.stderr


def test_show_of_a_completed_mission_says_where_its_map_is(
    env: dict[str, str], tmp_path: Path
) -> None:
    maps = tmp_path / "a directory with a long name, to be shown in full" / "maps"
    env = {**env, "SAGAKIT_IMPORTS": "sagakit_examples.slam", "SLAM_OUTPUT_DIR": str(maps)}
    ran = sagakit(env, "run", "slam", "--robots", "1", "--area", "lab", "--wait", "--json")
    assert ran.returncode == 0, ran.stderr
    view = json.loads(ran.stdout)
    map_path = next(s["output"]["map_path"] for s in view["steps"] if s["name"] == "integrate_maps")
    assert Path(map_path).is_file()

    shown = sagakit(env, "show", view["id"])
    assert shown.returncode == 0, shown.stderr
    rows = _output_rows(shown.stdout)
    # The map's path in full (a long one folds over lines), other values in a few words.
    assert _squeezed(rows[("integrate_maps", "map_path")]) == _squeezed(map_path)
    assert rows[("release_robots", "released")] == "[1]"
    assert rows[("explore[0]", "grid")].endswith("characters)")


def _squeezed(text: str) -> str:
    return re.sub(r"\s", "", text)


def _output_rows(text: str) -> dict[tuple[str, str], str]:
    """The outputs table as {(step, key): value}, folded cells joined."""
    section = text.split("outputs", 1)[1].split("history", 1)[0]
    rows: dict[tuple[str, str], str] = {}
    step = key = ""
    for line in section.splitlines():
        if not line.startswith("│"):
            continue
        cells = [cell.strip() for cell in line.split("│")[1:-1]]
        if cells[0] or cells[1]:
            step, key = cells[0] or step, cells[1]
            rows[(step, key)] = cells[2]
        else:
            rows[(step, key)] += " " + cells[2]
    return rows


def test_demo_ends_with_next_steps_that_work_as_printed(
    env: dict[str, str], tmp_path: Path
) -> None:
    # As after `make demo` in a fresh clone: sagakit is in .venv/bin, not on the PATH.
    here = Path(SAGAKIT).parent.resolve()
    path = [p for p in env.get("PATH", "").split(os.pathsep) if p and Path(p).resolve() != here]
    env = {
        **env,
        "PATH": os.pathsep.join(path),
        "SAGAKIT_IMPORTS": "sagakit_examples.slam",
        "SLAM_OUTPUT_DIR": str(tmp_path / "maps"),
    }
    demo = sagakit(env, "demo", "--robots", "1")
    assert demo.returncode == 0, demo.stderr
    last = demo.stdout.strip().splitlines()[-1]
    assert last.startswith("Next: "), last
    commands = re.findall(r"`([^`]+)`", last)
    listing = commands[0]
    assert listing.endswith(" list")
    activate = next(c for c in commands if c.startswith(". "))

    def listed(result: subprocess.CompletedProcess[str]) -> list[str]:
        assert result.returncode == 0, result.stderr
        return [s["status"] for s in json.loads(result.stdout)]

    shown = subprocess.run(
        [*shlex.split(listing), "--json"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    # Three orchestrated missions, then two choreographed ones.
    missions = ["compensated"] * 3 + ["completed"] * 2
    assert sorted(listed(shown)) == missions
    assert activate.endswith("activate")
    activated = subprocess.run(
        ["bash", "-c", f"{activate} && sagakit list --json"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert sorted(listed(activated)) == missions


def test_resolve_records_a_failed_compensation_as_done_by_hand(
    env: dict[str, str], tmp_path: Path
) -> None:
    blocker = tmp_path / "vendor-gone"
    blocker.write_text("the compensation of a fails while this file exists")
    faults = {"faults": {"b": ["fail"], "a": [f"undo_fail_while:{blocker}"]}}
    ran = sagakit(env, "run", "linear", "--input", json.dumps(faults), "--wait", "--json")
    saga_id = json.loads(ran.stdout)["id"]
    assert json.loads(ran.stdout)["status"] == "failed", ran.stderr

    refused = sagakit(env, "resolve", saga_id, "b", "--reason", "x")
    assert refused.returncode == 2
    assert "step 'b' has no failed compensation" in refused.stderr

    done = sagakit(env, "resolve", saga_id, "a", "--reason", "released by hand", "--by", "ana")
    assert (done.returncode, done.stdout.strip()) == (0, f"{saga_id} compensated"), done.stderr
    history = json.loads(sagakit(env, "show", saga_id, "--json").stdout)["history"]
    resolved = [h for h in history if h["event"] == "compensation_resolved"]
    assert [(h["step"], h["detail"]) for h in resolved] == [
        ("a", {"reason": "released by hand", "by": "ana"})
    ]
