"""OpenTelemetry tracing of sagas (the ``tracing`` extra; off unless ``SAGAKIT_TRACING``).

One trace per saga: the start opens a span (``start <saga type>``), a child of the caller's
span (the HTTP request, under FastAPI's instrumentation), and its W3C ``traceparent`` is kept
in the ``saga_started`` history entry. Every step message carries the context that sent it
in its ``traceparent`` header: the start's span, the attempt whose outcome sent it, or, for
what the sweeper sends (a retry after its delay, a re-send), the start's span again, read
from the history. The worker opens one span per attempt, ``step <name>`` or ``compensate
<name>``, with the attributes of `spans.ATTRIBUTES`, under Celery's own ``run/<task>`` span.

With tracing off nothing here is imported, the dispatcher is not wrapped and a step task
pays one attribute read (`runtime.app.tracing_for`).

- `spans`: the spans and the context carried in the messages;
- `dispatch`: the dispatcher that puts the context into each message;
- `setup`: the SDK, its exporter (the ``OTEL_*`` variables) and the instrumentations.
"""
