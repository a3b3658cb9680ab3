"""The dashboard over HTTP on the embedded app: sign-in, what the pages show, and that no
form changes anything without the write token, its CSRF token and the dashboard's origin.

What a browser sees and does is tested in tests/browser/test_dashboard.py.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from sagakit.api.dashboard import timeline
from tests.support.api_app import TestClient, running_client

TOKEN, READ = "dash-token", "dash-read"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
FORM = {"content-type": "application/x-www-form-urlencoded"}
SCRIPT = "<script>window.__pwned = 1</script>"


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    yield from running_client(
        tmp_path_factory.mktemp("dashboard"),
        api_token=TOKEN,
        api_read_token=READ,
        imports=["sagakit_examples.slam", "tests.support.hostile", "tests.support.workload"],
    )


def start(client: TestClient, saga_type: str, saga_input: dict[str, Any]) -> str:
    response = client.post(
        "/api/sagas", json={"type": saga_type, "input": saga_input}, headers=BEARER
    )
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def settled(client: TestClient, saga_id: str, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while True:
        status = str(client.get(f"/api/sagas/{saga_id}", headers=BEARER).json()["status"])
        if status in ("completed", "compensated", "failed"):
            return status
        assert time.monotonic() < deadline, f"{saga_id} still {status}"
        time.sleep(0.05)


def sign_in(client: TestClient, token: str) -> None:
    client.cookies.clear()
    response = client.post(
        "/login", content=f"token={token}&name=Ada&next=/", headers=FORM, follow_redirects=False
    )
    assert response.status_code == 303, response.text


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([0-9a-f]*)"', html)
    assert found, "no form with a CSRF token on the page"
    return found.group(1)


def test_pages_need_a_session_and_a_wrong_token_is_refused(client: TestClient) -> None:
    client.cookies.clear()
    page = client.get("/attention", follow_redirects=False)
    assert page.status_code == 303
    assert page.headers["location"] == "/login?next=%2Fattention"
    wrong = client.post("/login", content="token=nope", headers=FORM)
    assert wrong.status_code == 401
    assert "token: not SAGAKIT_API_TOKEN" in wrong.text
    sign_in(client, TOKEN)
    assert client.get("/attention").status_code == 200
    assert "sagakit_session" in client.cookies
    assert TOKEN not in str(client.cookies.get("sagakit_session"))  # a MAC, not the token


def test_markup_from_inputs_errors_and_outputs_is_shown_escaped(client: TestClient) -> None:
    saga_id = start(client, "hostile", {"note": SCRIPT})
    assert settled(client, saga_id) == "compensated"
    sign_in(client, READ)
    for path in (f"/sagas/{saga_id}", "/?type=hostile"):
        html = client.get(path).text
        assert SCRIPT not in html
        assert "&lt;script&gt;window.__pwned = 1&lt;/script&gt;" in html
        assert "<script" not in html.replace(
            '<script src="/static/dashboard/dashboard.js" defer>', ""
        )


def test_forms_refuse_without_csrf_from_another_origin_and_with_the_read_token(
    client: TestClient,
) -> None:
    saga_id = start(client, "linear", {"faults": {"c": ["fail"], "b": ["undo_fail:9"]}})
    assert settled(client, saga_id) == "failed"
    sign_in(client, TOKEN)
    csrf = csrf_of(client.get(f"/sagas/{saga_id}").text)
    assert client.get(f"/sagas/{saga_id}/retry").status_code == 405  # never by GET
    no_csrf = client.post(f"/sagas/{saga_id}/retry", content="", headers=FORM)
    assert no_csrf.status_code == 403
    assert "CSRF" in no_csrf.text
    cross = client.post(
        f"/sagas/{saga_id}/retry",
        content=f"csrf={csrf}",
        headers={**FORM, "origin": "https://evil.example"},
    )
    assert cross.status_code == 403
    assert "cross-site" in cross.text
    sign_in(client, READ)
    page = client.get(f"/sagas/{saga_id}").text
    assert "Buttons disabled: signed in with the read-only token" in page
    refused = client.post(f"/sagas/{saga_id}/retry", content=f"csrf={csrf_of(page)}", headers=FORM)
    assert refused.status_code == 403
    assert client.get(f"/api/sagas/{saga_id}", headers=BEARER).json()["status"] == "failed"

    sign_in(client, TOKEN)
    page = client.get("/attention").text
    assert saga_id in page and "Resolve…" in page
    done = client.post(
        f"/sagas/{saga_id}/resolve",
        content=f"csrf={csrf_of(page)}&step=b&reason=refunded+by+hand&back=/attention",
        headers=FORM,
        follow_redirects=False,
    )
    assert done.status_code == 303
    assert done.headers["location"] == "/attention"
    assert settled(client, saga_id) == "compensated"
    history = client.get(f"/api/sagas/{saga_id}", headers=BEARER).json()["history"]
    resolved = [h for h in history if h["event"] == "compensation_resolved"]
    assert resolved and resolved[0]["detail"]["by"] == "Ada"
    assert "resolved b of" in client.get("/attention").text  # the notice, once


def test_the_list_counts_filters_and_rejects_a_bad_filter_by_name(client: TestClient) -> None:
    sign_in(client, READ)
    saga_id = start(client, "slam", {"robots": 2, "area": "counts"})
    settled(client, saga_id)
    html = client.get("/?status=completed").text
    assert saga_id[:12] in html
    bad = client.get("/?status=done").text
    assert "status: must be one of pending" in bad
    assert client.get("/health").status_code == 200
    missing = client.get("/sagas/0123456789abcdef")
    assert missing.status_code == 404
    assert "0123456789abcdef" in missing.text


def test_a_wide_saga_with_many_retries_keeps_one_lane_per_instance() -> None:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)

    def at(seconds: float) -> str:
        return (t0 + timedelta(seconds=seconds)).isoformat()

    def attempt(n: int, start: float, status: str, direction: str = "action") -> dict[str, Any]:
        return {
            "attempt": n,
            "direction": direction,
            "status": status,
            "started_at": at(start),
            "finished_at": at(start + 0.5),
            "scheduled_at": at(start),
        }

    steps = [
        {
            "name": f"explore[{i}]",
            "status": "compensated",
            "attempts": [
                attempt(n, n * 1.0, "failed" if n < 5 else "succeeded") for n in range(1, 6)
            ],
            "compensations": [attempt(1, 30 - i, "succeeded", "compensation")],
        }
        for i in range(16)
    ]
    drawn = timeline.build(
        {"created_at": at(0), "finished_at": at(31), "steps": steps}, datetime.now(UTC)
    )
    assert [lane.name for lane in drawn.lanes] == [f"explore[{i}]" for i in range(16)]
    for lane in drawn.lanes:
        assert len(lane.bars) == 6 and len(lane.gaps) == 4  # 5 attempts, their backoffs, 1 undo
        assert all(timeline.LABEL <= bar.x <= timeline.WIDTH for bar in lane.bars)
        assert min(bar.width for bar in lane.bars) >= timeline.MIN_BAR
    undo_x = [lane.bars[-1].x for lane in drawn.lanes]
    assert undo_x == sorted(undo_x, reverse=True)  # the later branch was undone first


def test_cancel_from_a_running_sagas_page(client: TestClient) -> None:
    sign_in(client, TOKEN)
    saga_id = start(
        client, "slam", {"robots": 2, "area": "cancel", "faults": {"slow": {"explore": 3}}}
    )
    page = client.get(f"/sagas/{saga_id}").text
    assert "Cancel saga" in page and "What would be undone now" in page
    done = client.post(
        f"/sagas/{saga_id}/cancel",
        content=f"csrf={csrf_of(page)}",
        headers=FORM,
        follow_redirects=False,
    )
    assert done.status_code == 303
    assert settled(client, saga_id) == "compensated"
    reason = client.get(f"/api/sagas/{saga_id}", headers=BEARER).json()["reason"]
    assert reason == "cancelled: cancelled from the dashboard by Ada"
