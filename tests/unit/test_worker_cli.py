"""Bad values of `sagakit worker`'s Celery options: one line naming the option, nothing run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from sagakit.cli.worker_options import OptionError, WorkerOptions, check_node_name

ROOT = Path(__file__).resolve().parents[2]
SAGAKIT = str(Path(sys.executable).parent / "sagakit")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-c", "-1"], "-c/--concurrency: '-1' is not a non-negative integer or 'auto'"),
        (["--pool", "fibers"], "-P/--pool: 'fibers' is not one of prefork, "),
        (["--autoscale", "4,x"], "--autoscale: '4,x' is not MAX or MAX,MIN"),
        (["-l", "loud"], "-l/--loglevel: 'loud' is not one of DEBUG, INFO, WARNING"),
        (["--max-tasks-per-child", "0"], "--max-tasks-per-child: '0' is not a positive integer"),
    ],
)
def test_a_bad_value_is_one_line_naming_the_option(
    args: list[str], message: str, tmp_path: Path
) -> None:
    env = {**os.environ, "SAGAKIT_DATABASE_URL": f"sqlite:///{tmp_path}/w.db"}
    env.pop("SAGAKIT_BROKER_URL", None)
    done = subprocess.run(
        [SAGAKIT, "worker", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,  # a value wrongly accepted would start an embedded worker: fail, not hang
        check=False,
    )
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith(f"error: {message}"), done.stderr
    assert not (tmp_path / "w.db").exists()  # refused before anything was opened


def test_options_keep_celerys_meanings() -> None:
    options = WorkerOptions.parse(
        concurrency="auto",
        pool="threads",
        autoscale="2,8",
        max_tasks_per_child="5",
        max_memory_per_child="200000",
        gossip=False,
        mingle=True,
    )
    assert options.worker_kwargs() == {
        "concurrency": "auto",
        "pool": "threads",
        "autoscale": (8, 2),  # either order, as celery takes it
        "max_tasks_per_child": 5,
        "max_memory_per_child": 200000,
        "without_gossip": True,
        "without_mingle": False,
    }
    single = WorkerOptions.parse(
        concurrency="0",
        pool="prefork",
        autoscale="6",
        max_tasks_per_child=None,
        max_memory_per_child=None,
        gossip=True,
        mingle=False,
    )
    assert single.concurrency == 0  # 0: celery's default, one per CPU
    assert single.autoscale == (6, 0)
    # Celery's prefork pool, reaping a killed pool process at once (sagakit.runtime.pool).
    assert single.worker_kwargs()["pool"] == "sagakit.runtime.pool:TaskPool"


def test_node_names_expand_like_celerys() -> None:
    import socket

    host = socket.gethostname()
    assert check_node_name("robots@%h") == f"robots@{host}"
    assert check_node_name("robots") == "celery@robots"  # a bare name is the host part
    assert check_node_name(None) == f"celery@{host}"
    with pytest.raises(OptionError, match="-n/--hostname"):
        check_node_name("@x")
