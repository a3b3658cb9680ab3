"""What `sagakit up` checks before it starts anything, and Flower's password file.

The refusals run the installed entry point against service URLs nothing listens on: each
must come before any connection, as one line.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from sagakit.cli.up import flower_password
from sagakit.settings import Settings
from tests.support.redis_server import free_port

ROOT = Path(__file__).resolve().parents[2]
SAGAKIT = str(Path(sys.executable).parent / "sagakit")


def _up(tmp_path: Path, **settings: str) -> subprocess.CompletedProcess[str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("SAGAKIT_", "FLOWER_"))
    }
    env.update(
        {
            # Nothing listens on port 1: a check that came after a connection would hang or
            # fail differently.
            "SAGAKIT_DATABASE_URL": "postgresql+psycopg://nobody@127.0.0.1:1/none",
            "SAGAKIT_BROKER_URL": "redis://127.0.0.1:1/0",
            "SAGAKIT_API_PORT": str(free_port()),
            "SAGAKIT_FLOWER_PORT": str(free_port()),
            "SAGAKIT_DATA_DIR": str(tmp_path / "data"),
            **settings,
        }
    )
    return subprocess.run(
        [SAGAKIT, "up"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )


def _refused(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("error: ")
    return done.stderr.removeprefix("error: ").strip()


def test_up_refuses_one_port_for_the_api_and_flower(tmp_path: Path) -> None:
    port = str(free_port())
    message = _refused(_up(tmp_path, SAGAKIT_API_PORT=port, SAGAKIT_FLOWER_PORT=port))
    assert message == (
        f"SAGAKIT_API_PORT and SAGAKIT_FLOWER_PORT are both {port}: give Flower a port of its own"
    )


def test_up_refuses_a_password_file_others_can_read(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    secret = data / "flower-password"
    secret.write_text("s3cret-value\n")
    secret.chmod(0o644)
    message = _refused(_up(tmp_path))
    assert message == (
        f"{secret} is open to other users (mode 644): chmod 600 it, or delete it to have "
        "a new password generated"
    )
    assert "s3cret-value" not in message


def test_up_refuses_a_data_dir_it_cannot_create(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    message = _refused(_up(tmp_path, SAGAKIT_DATA_DIR=str(blocker / "data")))
    assert message == (
        f"cannot create the data directory {blocker / 'data'} (Not a directory): set "
        "SAGAKIT_DATA_DIR to a directory you can write"
    )


def test_up_refuses_a_flower_password_flower_would_split(tmp_path: Path) -> None:
    message = _refused(_up(tmp_path, SAGAKIT_FLOWER_PASSWORD="a,b"))
    assert message.startswith("SAGAKIT_FLOWER_PASSWORD must not contain ','")


def test_a_generated_password_is_kept_for_the_next_run(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, flower_password=None)
    password, where = flower_password(settings)
    path = tmp_path / "flower-password"
    assert where == f"in {path}"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text() == password + "\n"
    assert len(password) >= 16
    assert flower_password(settings) == (password, where)


def test_a_configured_password_is_used_and_never_written(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, flower_password="from-env")
    assert flower_password(settings) == ("from-env", "from SAGAKIT_FLOWER_PASSWORD")
    assert not (tmp_path / "flower-password").exists()


@pytest.mark.parametrize("user", ["ad:min", "a,b"])
def test_a_flower_user_flower_cannot_parse_is_refused(user: str, tmp_path: Path) -> None:
    from sagakit.cli.up import StackError

    with pytest.raises(StackError, match="SAGAKIT_FLOWER_USER must not contain"):
        flower_password(Settings(data_dir=tmp_path, flower_user=user, flower_password=None))
