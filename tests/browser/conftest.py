"""A real browser (Debian's chromium through Playwright) and a real `sagakit api` process.

Chromium missing skips these tests locally and fails them in CI, like the services in
tests/conftest.py. Every request the page makes to anything but 127.0.0.1 is aborted and
recorded, so a passing test proves the page works without internet.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from playwright.sync_api import Browser, Page, Route, expect, sync_playwright

from tests.support.browser import Api, Offline

CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
CHROMIUM = Path(os.environ.get("SAGAKIT_TEST_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
REPO = Path(__file__).resolve().parents[2]
API_TOKEN = "docs-page-token"
READY_TIMEOUT = 60.0

expect.set_options(timeout=20_000)  # two shared cores: the bundle can take a while to run


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_ready(api: Api, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"sagakit api exited with {process.returncode}:\n{api.log.read_text()}")
        try:
            if httpx.get(f"{api.url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    pytest.fail(f"sagakit api not ready after {READY_TIMEOUT}s:\n{api.log.read_text()}")


@pytest.fixture(scope="session")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """`sagakit api` (the installed entry point) on the embedded default, token set."""
    tmp = tmp_path_factory.mktemp("docs-api")
    entry_point = Path(sys.executable).with_name("sagakit")
    assert entry_point.exists(), f"the sagakit entry point is not installed at {entry_point}"
    env = {name: value for name, value in os.environ.items() if not name.startswith("SAGAKIT_")}
    env.update(
        SAGAKIT_DATABASE_URL=f"sqlite:///{tmp}/sagakit.db",
        SAGAKIT_API_TOKEN=API_TOKEN,
        SLAM_DATABASE_URL=f"sqlite:///{tmp}/slam.db",
        SLAM_OUTPUT_DIR=str(tmp),
    )
    port = _free_port()
    api = Api(url=f"http://127.0.0.1:{port}", token=API_TOKEN, log=tmp / "api.log")
    with api.log.open("wb") as log:
        process = subprocess.Popen(
            [str(entry_point), "api", "--host", "127.0.0.1", "--port", str(port)],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_ready(api, process)
        yield api
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    """Headless chromium from the distribution (Playwright cannot download its own here)."""
    if not CHROMIUM.exists():
        message = f"chromium not found at {CHROMIUM} (apt-get install chromium)"
        if CI:
            pytest.fail(f"{message}; required in CI")
        pytest.skip(message)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def offline() -> Offline:
    return Offline()


@pytest.fixture
def page(browser: Browser, offline: Offline) -> Iterator[Page]:
    """A fresh page that may reach 127.0.0.1 only."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})

    def only_local(route: Route) -> None:
        if urlsplit(route.request.url).hostname == "127.0.0.1":
            route.continue_()
        else:
            offline.blocked.append(route.request.url)
            route.abort()

    context.route("**/*", only_local)
    page = context.new_page()
    page.on("pageerror", lambda error: offline.page_errors.append(str(error)))
    try:
        yield page
    finally:
        context.close()
