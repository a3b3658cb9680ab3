"""/docs in a real browser, offline: what a user of the API docs sees and can do there."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from playwright.sync_api import Locator, Page, expect

from tests.support.browser import Api, Offline

pytestmark = pytest.mark.browser

OPERATIONS = [
    ("POST", "/api/sagas"),
    ("GET", "/api/sagas"),
    ("GET", "/api/sagas/{saga_id}"),
    ("POST", "/api/sagas/{saga_id}/cancel"),
    ("POST", "/api/sagas/{saga_id}/retry"),
    ("GET", "/api/sagas/{saga_id}/events"),
    ("GET", "/healthz"),
    ("GET", "/metrics"),
    ("GET", "/api/robots"),
]
MISSION = {"type": "slam", "input": {"robots": 2, "area": "docs-page"}}


def open_docs(page: Page, api: Api) -> None:
    page.goto(f"{api.url}/docs")
    expect(page.locator(".opblock").first).to_be_visible()


def operation(page: Page, method: str, path: str) -> Locator:
    summary = page.locator(".opblock-summary").filter(
        has=page.locator(".opblock-summary-method", has_text=re.compile(f"^{method}$"))
    )
    summary = summary.filter(
        has=page.locator(".opblock-summary-path", has_text=re.compile(f"^{re.escape(path)}$"))
    )
    return page.locator(".opblock").filter(has=summary)


def expand(page: Page, method: str, path: str) -> Locator:
    block = operation(page, method, path)
    block.locator(".opblock-summary-control").click()
    expect(block.locator(".opblock-body")).to_be_visible()
    return block


def assert_offline(offline: Offline) -> None:
    assert offline.blocked == [], "the page asked for something besides the API"
    assert offline.page_errors == []


def test_docs_render_every_operation_offline(
    page: Page, offline: Offline, api: Api, tmp_path: Path
) -> None:
    open_docs(page, api)

    for method, path in OPERATIONS:
        expect(operation(page, method, path)).to_have_count(1)
    expect(page.get_by_text("Unable to render")).to_have_count(0)
    expect(page.locator(".errors-wrapper")).to_have_count(0)
    expect(page.locator(".info .title")).to_contain_text("sagakit")
    expect(page.locator(".info .title")).to_contain_text("OAS 3.1")
    expect(page.get_by_role("button", name="Authorize")).to_be_visible()
    # A lock on exactly the routes that need the token.
    for method, path in OPERATIONS:
        lock = operation(page, method, path).locator(".authorization__btn")
        expect(lock).to_have_count(1 if path.startswith("/api/") else 0)
    page.screenshot(path=tmp_path / "docs.png", full_page=True)
    assert_offline(offline)


def test_the_slam_input_is_shown_with_its_descriptions_and_limits(
    page: Page, offline: Offline, api: Api, tmp_path: Path
) -> None:
    open_docs(page, api)
    body = expand(page, "POST", "/api/sagas").locator(".opblock-section-request-body")

    body.get_by_role("tab", name="Schema").click()
    # One member per saga type (a oneOf when there are several; here slam is the only one).
    for _ in range(5):  # the body, then its input: each level opens on its own
        closed = body.get_by_role("button", name="Expand all")
        if closed.count() == 0:
            break
        closed.first.click()
    slam = body.locator(".json-schema-2020-12").filter(has_text='Const"slam"').first
    expect(slam).to_contain_text("Collaborative multi-robot SLAM exploration")
    for field, limits, description in [
        ("robots", "[1, 16]", "Robots to send, one sector each."),
        ("area", "[1, 64] characters", "Name of the area; it seeds the world's layout."),
        ("seed", "[0, 4294967295]", "World and sensor-noise seed."),
        ("width", "[20, 400]", "World width in cells."),
        ("height", "[20, 400]", "World height in cells."),
        ("faults", "object", "Failures to inject."),
    ]:
        row = slam.locator(".json-schema-2020-12-property").filter(
            has=page.locator(".json-schema-2020-12__title", has_text=re.compile(f"^{field}$"))
        )
        expect(row.first).to_contain_text(limits)
        expect(row.first).to_contain_text(description)
    body.screenshot(path=tmp_path / "slam-input.png")
    assert_offline(offline)


def test_authorize_then_try_it_out_starts_a_mission(
    page: Page, offline: Offline, api: Api, tmp_path: Path
) -> None:
    open_docs(page, api)
    block = expand(page, "POST", "/api/sagas")
    block.get_by_role("button", name="Try it out").click()
    editor = block.locator("textarea.body-param__text")
    assert json.loads(editor.input_value())["type"] == "slam"  # the example starts with slam
    editor.fill(json.dumps(MISSION, indent=2))
    status = block.locator(".live-responses-table .response .response-col_status")

    block.get_by_role("button", name="Execute").click()
    expect(status).to_have_text("401")  # not authorized yet
    expect(block.locator(".live-responses-table")).to_contain_text("missing or wrong bearer token")

    page.get_by_role("button", name="Authorize").first.click()
    dialog = page.locator(".dialog-ux")
    dialog.get_by_label("auth-bearer-value").fill(api.token)
    dialog.get_by_role("button", name="Apply credentials").click()
    expect(dialog).to_contain_text("Authorized")
    dialog.get_by_role("button", name="Close").click()
    block.get_by_role("button", name="Execute").click()

    expect(status).to_have_text("202")
    started = json.loads(
        block.locator(".live-responses-table .response-col_description pre").first.inner_text()
    )
    page.screenshot(path=tmp_path / "try-it-out.png", full_page=True)
    detail = api.get(f"/api/sagas/{started['id']}")
    assert detail.status_code == 200, detail.text
    assert detail.json()["type"] == "slam"
    assert detail.json()["input"]["robots"] == 2
    assert detail.json()["input"]["area"] == "docs-page"
    assert_offline(offline)
