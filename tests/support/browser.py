"""What the browser tests of the docs page share with their fixtures (tests/browser)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import httpx


@dataclass
class Api:
    """The running `sagakit api`: where it listens and its token."""

    url: str
    token: str
    log: Path

    def get(self, path: str) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.token}"}
        return httpx.get(f"{self.url}{path}", headers=headers, timeout=10)


@dataclass
class Offline:
    """What the page tried to fetch from elsewhere (aborted) and the errors it raised."""

    blocked: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
