"""The shop's own app (`shop_app`, unchanged), with the tracing tests' in-memory exporter
set up before its ``sagakit.adopt(app)`` runs (``celery -A tests.support.traced_shop``)."""

from __future__ import annotations

import tests.support.traced  # noqa: F401  (the tracer provider first: adopt keeps it)
from tests.support.shop_app import app

__all__ = ["app"]
