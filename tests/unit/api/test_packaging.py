"""The docs page's assets ship in the wheel, so an installed sagakit serves /docs offline."""

from __future__ import annotations

import zipfile
from pathlib import Path

from hatchling.builders.wheel import WheelBuilder

REPO = Path(__file__).resolve().parents[3]
ASSETS = "sagakit/api/static/swagger-ui/"


def test_the_wheel_holds_swagger_ui_and_its_licence(tmp_path: Path) -> None:
    wheel = next(WheelBuilder(str(REPO)).build(directory=str(tmp_path), versions=["standard"]))

    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        version = archive.read(ASSETS + "VERSION").decode().strip()
        licence = archive.read(ASSETS + "LICENSE").decode()
    for name in ("swagger-ui-bundle.js", "swagger-ui.css", "favicon-32x32.png", "NOTICE"):
        assert ASSETS + name in names, name
    assert version.startswith("5.")
    assert "Apache License" in licence
    assert "sagakit/api/app.py" in names
