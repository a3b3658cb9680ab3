"""The OpenTelemetry SDK for a sagakit process, and the official instrumentations.

Configured by OpenTelemetry's own variables: ``OTEL_SERVICE_NAME``,
``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_TRACES_EXPORTER`` (``otlp``, the default; ``console``;
``none``), ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``),
``OTEL_EXPORTER_OTLP_HEADERS``, ``OTEL_TRACES_SAMPLER``. An application that set up a
tracer provider of its own before (``opentelemetry-instrument``, its own code in a module of
``SAGAKIT_IMPORTS``) keeps it.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from ..core.errors import InvalidInput

logger = logging.getLogger(__name__)

MISSING = InvalidInput(
    "SAGAKIT_TRACING", "is on but OpenTelemetry is not installed: pip install 'sagakit[tracing]'"
)


def install(service_name: str = "sagakit") -> None:
    """Set up the SDK (unless the process has a provider already) and instrument Celery
    and SQLAlchemy. Raises InvalidInput without the extra."""
    try:
        from opentelemetry import trace
        from opentelemetry.instrumentation.celery import CeleryInstrumentor
        from opentelemetry.instrumentation.dependencies import get_dependency_conflicts
        from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
    except ImportError:
        raise MISSING from None
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        name = os.environ.get("OTEL_SERVICE_NAME") or service_name
        provider = TracerProvider(resource=Resource.create({SERVICE_NAME: name}))
        processor = _processor()
        if processor is not None:
            provider.add_span_processor(processor)
        trace.set_tracer_provider(provider)
    celery = CeleryInstrumentor()  # type: ignore[no-untyped-call]
    if not celery.is_instrumented_by_opentelemetry:
        celery.instrument()
    # SQLAlchemy's wraps create_engine: the saga log's engines, made after this, are traced
    # (the hot path's own statements go through the driver: the attempt's span covers them).
    # Only where the instrumentation supports the installed SQLAlchemy (not 2.1 yet).
    database = SQLAlchemyInstrumentor()
    fits = get_dependency_conflicts(database.instrumentation_dependencies()) is None
    if fits and not database.is_instrumented_by_opentelemetry:
        database.instrument()


def instrument_api(app: Any) -> None:
    """Trace the HTTP API's requests (FastAPI's instrumentation): a start request is the
    parent of its saga's spans."""
    try:
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
    except ImportError:
        raise MISSING from None
    FastAPIInstrumentor.instrument_app(app, excluded_urls="healthz,metrics")


def _processor() -> Any:
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    kind = os.environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower()
    if kind == "none":
        return None
    if kind == "console":
        return BatchSpanProcessor(ConsoleSpanExporter())
    if kind != "otlp":
        logger.warning("OTEL_TRACES_EXPORTER=%s is not one sagakit knows; using otlp", kind)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    # A batch, sent from a thread (re-made in each forked pool process): a step never
    # waits on the collector.
    return BatchSpanProcessor(OTLPSpanExporter())
