"""OpenTelemetry for the tracing tests: the SDK's in-memory exporter, in every process.

Named in SAGAKIT_IMPORTS (beside the workload), it sets the process's tracer provider before
sagakit's tracing setup, which keeps it. Each finished span is kept in memory and, in a
worker, also appended as one JSON line to the file ``SAGAKIT_TEST_SPANS`` names, for the test
to read from outside.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

SPANS_FILE = "SAGAKIT_TEST_SPANS"


def record(span: ReadableSpan) -> dict[str, Any]:
    """A finished span as the tests read it."""
    context = span.get_span_context()
    assert context is not None
    return {
        "name": span.name,
        "trace_id": f"{context.trace_id:032x}",
        "span_id": f"{context.span_id:016x}",
        "parent_id": f"{span.parent.span_id:016x}" if span.parent else None,
        "attributes": dict(span.attributes or {}),
        "status": span.status.status_code.name,
        "pid": os.getpid(),
    }


class FileExporter(InMemorySpanExporter):
    """The in-memory exporter, also writing each span to ``$SAGAKIT_TEST_SPANS``."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        path = os.environ.get(SPANS_FILE)
        if path:
            with Path(path).open("a") as out:  # one write per line: whole lines
                for span in spans:
                    out.write(json.dumps(record(span)) + "\n")
        return super().export(spans)


EXPORTER = FileExporter()
if not isinstance(trace.get_tracer_provider(), TracerProvider):
    _provider = TracerProvider()
    _provider.add_span_processor(SimpleSpanProcessor(EXPORTER))
    trace.set_tracer_provider(_provider)


def spans(path: Path) -> list[dict[str, Any]]:
    """The spans the workers wrote to `path`, and those of this process."""
    written = path.read_text().splitlines() if path.exists() else []
    return [json.loads(line) for line in written] + [
        record(span) for span in EXPORTER.get_finished_spans()
    ]
