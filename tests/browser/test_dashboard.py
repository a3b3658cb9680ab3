"""The dashboard in a real browser against a real stack (PostgreSQL, Redis, a Celery worker
process, the API and Flower, as `sagakit up` runs them), offline: the Done-when checks of
the dashboard, on one stack started once for the module."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import redis
from playwright.sync_api import Browser, BrowserContext, Page, Route, expect

from tests.support.browser import Offline
from tests.support.stack import Stack, start_stack

pytestmark = [pytest.mark.browser, pytest.mark.integration, pytest.mark.postgres, pytest.mark.redis]
TOKEN = "dashboard-browser-token"
QUEUES = ["robots", "planning", "exploration", "mapping", "hostile", "work", "sagakit"]
SETTLED = ("completed", "compensated", "failed")


@pytest.fixture(scope="module")
def stack(
    pg_databases: Callable[[], str], redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    pg_url = pg_databases()
    redis.Redis.from_url(redis_url).flushdb()
    tmp = tmp_path_factory.mktemp("dashboard-stack")
    env = {
        "SAGAKIT_DATABASE_URL": pg_url,
        "SAGAKIT_BROKER_URL": redis_url,
        "SAGAKIT_REDIS_URL": redis_url,
        "SAGAKIT_IMPORTS": "sagakit_examples.slam,tests.support.hostile,tests.support.workload",
        "SAGAKIT_API_TOKEN": TOKEN,
        "SAGAKIT_FLOWER_PASSWORD": "flower-pass",
        "SAGAKIT_SWEEP_INTERVAL": "0.3",
        "SAGAKIT_DATA_DIR": str(tmp / "data"),
        "SLAM_DATABASE_URL": pg_url,
        "SLAM_FLEET_SIZE": "12",
        "SLAM_OUTPUT_DIR": str(tmp / "maps"),
    }
    running = start_stack(env, QUEUES, tmp)
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def context(browser: Browser, stack: Stack) -> Iterator[BrowserContext]:
    """A browser that may reach 127.0.0.1 only, signed in, with Flower's credentials."""
    user, password = stack.flower_auth
    context = browser.new_context(
        viewport={"width": 1280, "height": 900},
        http_credentials={"username": user, "password": password},
    )
    context.offline_log = Offline()  # type: ignore[attr-defined]

    def only_local(route: Route) -> None:
        if urlsplit(route.request.url).hostname == "127.0.0.1":
            route.continue_()
        else:
            context.offline_log.blocked.append(route.request.url)  # type: ignore[attr-defined]
            route.abort()

    context.route("**/*", only_local)
    page = context.new_page()
    page.goto(f"{stack.api}/attention")
    expect(page).to_have_url(f"{stack.api}/login?next=%2Fattention")
    page.get_by_label("Token").fill(TOKEN)
    page.get_by_label("Your name").fill("Grace")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Needs attention")).to_be_visible()
    page.close()
    try:
        yield context
    finally:
        log: Offline = context.offline_log  # type: ignore[attr-defined]
        context.close()
        assert log.blocked == [], "the dashboard asked for something besides 127.0.0.1"


@pytest.fixture
def page(context: BrowserContext) -> Iterator[Page]:
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    try:
        yield page
    finally:
        page.close()
        assert errors == []


def start(stack: Stack, saga_type: str, saga_input: dict[str, Any]) -> str:
    with stack.client() as client:
        response = client.post("/api/sagas", json={"type": saga_type, "input": saga_input})
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def settle(stack: Stack, saga_id: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    with stack.client() as client:
        while True:
            status = str(client.get(f"/api/sagas/{saga_id}").json()["status"])
            if status in SETTLED:
                return status
            assert time.monotonic() < deadline, f"{saga_id} still {status}\n{stack.tail()}"
            time.sleep(0.1)


def test_the_list_shows_a_running_mission_appear_and_settle_live(
    page: Page, stack: Stack, context: BrowserContext
) -> None:
    page.goto(f"{stack.api}/")
    expect(page.locator("[data-live-indicator]")).to_be_visible()  # the stream is open
    page.evaluate("window.__sameDocument = true")
    slow = {"slow": {"explore": 5}}
    saga_id = start(stack, "slam", {"robots": 2, "area": "live-list", "faults": slow})
    row = page.locator(f'tr[data-saga="{saga_id}"]')
    expect(row).to_have_attribute("data-status", "running")
    expect(row.locator(".badge")).to_contain_text("running")

    # Its own page follows it too: the timeline keeps time, and it settles in place.
    saga = context.new_page()
    errors: list[str] = []
    saga.on("pageerror", lambda error: errors.append(str(error)))
    saga.goto(f"{stack.api}/sagas/{saga_id}")
    running = saga.locator('rect.bar[data-status="running"]').first
    expect(running).to_be_attached()
    before = running.get_attribute("width")
    saga.evaluate("window.__sameDocument = true")
    saga.wait_for_function(
        "w => { const b = document.querySelector('rect.bar[data-status=running]');"
        " return !b || b.getAttribute('width') !== w; }",
        arg=before,
    )
    expect(saga.locator(".page-head .badge")).to_contain_text("completed", timeout=30_000)
    expect(saga.locator(".now")).to_have_count(0)
    assert saga.evaluate("window.__sameDocument") is True
    saga.close()
    assert errors == []

    expect(row).to_have_attribute("data-status", "completed", timeout=30_000)
    assert page.evaluate("window.__sameDocument") is True  # no reload: updated in place


def test_compensations_sit_on_their_steps_lanes_in_reverse_completion_order(
    page: Page, stack: Stack, context: BrowserContext
) -> None:
    saga_id = start(
        stack, "slam", {"robots": 3, "area": "lanes", "faults": {"fail_at": "integrate_maps"}}
    )
    assert settle(stack, saga_id) == "compensated"
    page.goto(f"{stack.api}/sagas/{saga_id}")
    expect(page.locator(".page-head .badge")).to_contain_text("compensated")
    bars: list[dict[str, Any]] = page.evaluate(
        """() => [...document.querySelectorAll("svg.timeline rect.bar")].map(bar => {
            const band = document.querySelector(
                `rect[data-lane-band="${CSS.escape(bar.dataset.lane)}"]`).getBoundingClientRect();
            const box = bar.getBoundingClientRect();
            return {lane: bar.dataset.lane, direction: bar.dataset.direction,
                    status: bar.dataset.status, start: bar.dataset.start,
                    end: bar.dataset.end, x: box.x,
                    inside: box.top >= band.top && box.bottom <= band.bottom,
                    owner: bar.closest("g.lane").dataset.lane};
        })"""
    )
    for bar in bars:
        bar["start"], bar["end"] = (
            datetime.fromisoformat(bar["start"]),
            datetime.fromisoformat(bar["end"]),
        )
    undone = [b for b in bars if b["direction"] == "compensation"]
    assert {b["lane"] for b in undone} == {
        "allocate_robots",
        "plan_routes",
        "explore[0]",
        "explore[1]",
        "explore[2]",
    }
    for bar in undone:
        assert bar["inside"] and bar["owner"] == bar["lane"], bar
    done = sorted(
        (b for b in bars if b["direction"] == "action" and b["status"] == "succeeded"),
        key=lambda b: b["end"],
    )
    by_time = [b["lane"] for b in sorted(undone, key=lambda b: b["start"])]
    assert by_time == [b["lane"] for b in reversed(done)]
    assert by_time == [b["lane"] for b in sorted(undone, key=lambda b: b["x"])]  # drawn so

    # Each attempt links to its task in Flower, which opens behind its basic auth.
    link = page.locator("a[data-flower-task]").first
    task_id = str(link.get_attribute("data-flower-task"))
    user, password = stack.flower_auth
    deadline = time.monotonic() + 30
    while (
        httpx.get(f"{stack.flower}/api/task/info/{task_id}", auth=(user, password)).status_code
        != 200
    ):
        assert time.monotonic() < deadline, f"Flower never saw {task_id}"
        time.sleep(0.2)
    with context.expect_page() as opened:
        link.click()
    flower = opened.value
    expect(flower.locator("body")).to_contain_text(task_id)
    expect(flower.locator("body")).to_contain_text("robots.allocate")
    assert flower.url.startswith(f"{stack.flower}/task/")
    flower.close()


def test_an_eager_sagas_steps_link_to_the_delivery_that_ran_them(
    page: Page, stack: Stack, context: BrowserContext
) -> None:
    saga_id = start(stack, "eager", {})
    assert settle(stack, saga_id) == "completed"
    page.goto(f"{stack.api}/sagas/{saga_id}")
    expect(page.locator(".page-head .badge")).to_contain_text("completed")
    links = page.locator("td.task a[data-flower-task]")
    expect(links).to_have_count(4)
    cells = [links.nth(i) for i in range(4)]
    first = str(cells[0].get_attribute("data-flower-task"))
    assert first.startswith(saga_id) and first.endswith(".a.fwd.1")
    expect(cells[0]).not_to_contain_text("eager")
    for cell in cells[1:]:  # b, c and d ran in a's delivery: Flower knows that task
        expect(cell).to_contain_text("eager")
        assert cell.get_attribute("data-flower-task") == first
    user, password = stack.flower_auth
    deadline = time.monotonic() + 30
    while (
        httpx.get(f"{stack.flower}/api/task/info/{first}", auth=(user, password)).status_code != 200
    ):
        assert time.monotonic() < deadline, f"Flower never saw {first}"
        time.sleep(0.2)
    with context.expect_page() as opened:
        cells[2].click()
    flower = opened.value
    expect(flower.locator("body")).to_contain_text(first)
    expect(flower.locator("body")).to_contain_text("work.a")
    flower.close()


def test_a_failed_saga_retried_from_the_attention_page_becomes_compensated(
    page: Page, stack: Stack
) -> None:
    faults = {"fail_at": "explore", "compensation_fail": {"plan_routes": 5}}
    saga_id = start(stack, "slam", {"robots": 2, "area": "attention", "faults": faults})
    assert settle(stack, saga_id) == "failed"
    page.goto(f"{stack.api}/attention")
    row = page.locator(f'tr[data-saga="{saga_id}"]')
    expect(row).to_contain_text("plan_routes")
    row.get_by_role("button", name="Retry", exact=True).click()
    expect(page.locator(".flash")).to_contain_text(f"retrying {saga_id}")
    page.goto(f"{stack.api}/sagas/{saga_id}")
    # The log first (with the stack's logs if it does not get there), then what the page shows.
    assert settle(stack, saga_id) == "compensated"
    expect(page.locator(".page-head .badge")).to_contain_text("compensated", timeout=30_000)


def test_markup_in_input_and_error_is_inert(page: Page, stack: Stack) -> None:
    note = "<script>window.__pwned = 1</script><img src=x onerror=window.__pwned=2>"
    saga_id = start(stack, "hostile", {"note": note})
    assert settle(stack, saga_id) == "compensated"
    for path in ("/?type=hostile", "/", f"/sagas/{saga_id}"):
        page.goto(f"{stack.api}{path}")
        expect(page.locator("main")).to_contain_text("refused: <script>window.__pwned = 1</script>")
        assert page.evaluate("window.__pwned") is None
    page.locator("details#d-input summary").click()
    expect(page.locator("details#d-input pre")).to_contain_text(note)
    assert page.evaluate("window.__pwned") is None
