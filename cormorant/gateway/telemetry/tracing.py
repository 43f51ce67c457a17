"""OpenTelemetry spans per request (admission -> queue -> prefill -> decode), over OTLP/HTTP.

Exported when an endpoint is configured, and nothing at all (not even an import) otherwise.
The spans are made after the fact, when the response is complete, from timestamps the
request record already holds; so tracing adds no work to the hot path, no context has to
flow through the engine, and a request that never reached the engine still gets its root
span. "admission" is the issue's "auth" phase widened to what really happens before the
engine sees the request: authentication, validation, tokenization, quotas and admission.
Without the engine's first-scheduled time there is no "queue" span and "prefill" starts at
the engine's arrival (marked with cormorant.prefill_includes_queue).
A caller's W3C traceparent header is honoured, so our spans join its trace.

opentelemetry-api, -sdk and -exporter-otlp-proto-http are optional: imported lazily, and a
configured endpoint without them fails the server start with an install hint.
Imports only the standard library at module level.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Protocol

logger = logging.getLogger("cormorant.gateway")
INSTALL_HINT = "pip install opentelemetry-sdk opentelemetry-exporter-otlp-proto-http"


class TracingUnavailable(RuntimeError):
    pass


class SpanSource(Protocol):
    """What a finished request tells the tracer (gateway.telemetry.request_log.RequestRecord)."""

    start_mono: float
    start_wall_ns: int
    end_mono: float | None
    headers: dict[str, str]

    def span_attributes(self) -> dict[str, Any]: ...

    def engine_times(self) -> tuple[float | None, float | None, float | None, float | None]:
        """(engine arrival, first scheduled, first token, finished), monotonic, or None."""


def traces_url(endpoint: str) -> str:
    """A collector base URL gets OTLP/HTTP's traces path, as OTEL_EXPORTER_OTLP_ENDPOINT does."""
    endpoint = endpoint.rstrip("/")
    return endpoint if endpoint.endswith("/v1/traces") else endpoint + "/v1/traces"


class Tracing:
    """Emits one request's spans. Built from an endpoint (`from_endpoint`) or, for tests and
    embedders, around any SDK TracerProvider."""

    def __init__(self, provider: Any, service_name: str = "cormorant") -> None:
        from opentelemetry import propagate, trace

        self._provider = provider
        self._trace = trace
        self._propagate = propagate
        self._tracer = provider.get_tracer("cormorant.gateway")
        self.service_name = service_name

    @classmethod
    def from_endpoint(cls, endpoint: str | None, service_name: str = "cormorant"
                      ) -> "Tracing | None":
        if not endpoint:
            return None
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
        except ImportError as exc:
            raise TracingUnavailable(f"--otlp-endpoint needs the OpenTelemetry SDK and OTLP "
                                     f"exporter ({exc.name} is missing): {INSTALL_HINT}") from exc
        # A provider of our own, not the global one: apps in one process stay independent.
        provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(
            endpoint=traces_url(endpoint))))
        logger.info("tracing: exporting spans to %s", traces_url(endpoint))
        return cls(provider, service_name)

    def shutdown(self) -> None:
        """Export what is buffered (bounded by the SDK's own timeouts)."""
        shutdown = getattr(self._provider, "shutdown", None)
        if shutdown is not None:
            shutdown()

    def emit(self, source: SpanSource) -> None:
        try:
            self._emit(source)
        except Exception:  # tracing must never fail a request
            logger.exception("tracing: could not emit spans")

    def _emit(self, source: SpanSource) -> None:
        end_mono = source.end_mono if source.end_mono is not None else time.monotonic()

        def ns(mono: float) -> int:  # monotonic -> wall-clock nanoseconds
            return source.start_wall_ns + int((mono - source.start_mono) * 1e9)

        parent = self._propagate.extract(source.headers)
        attributes = source.span_attributes()
        root = self._tracer.start_span("cormorant.request", context=parent,
                                       kind=self._trace.SpanKind.SERVER,
                                       start_time=ns(source.start_mono), attributes=attributes)
        if attributes.get("http.response.status_code", 200) >= 500:
            root.set_status(self._trace.Status(self._trace.StatusCode.ERROR))
        ctx = self._trace.set_span_in_context(root)
        for name, start, end, attributes in _phases(source, end_mono):
            span = self._tracer.start_span(name, context=ctx, start_time=ns(start),
                                           attributes=attributes)
            span.end(end_time=ns(end))
        root.end(end_time=ns(end_mono))


def _phases(source: SpanSource, end_mono: float) -> list[tuple[str, float, float, dict]]:
    arrival, scheduled, first_token, finished = source.engine_times()
    if arrival is None:  # never reached the engine: the root span is the whole story
        return []
    phases = [("admission", source.start_mono, arrival, {})]
    if scheduled is not None:
        phases.append(("queue", arrival, scheduled, {}))
    prefill_start = scheduled if scheduled is not None else arrival
    prefill_end = first_token if first_token is not None else (finished or end_mono)
    phases.append(("prefill", prefill_start, prefill_end,
                   {"cormorant.prefill_includes_queue": scheduled is None}))
    if first_token is not None:
        phases.append(("decode", first_token, finished or end_mono, {}))
    return [(n, s, max(s, e), a) for n, s, e, a in phases]
