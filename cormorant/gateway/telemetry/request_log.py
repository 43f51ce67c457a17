"""Per-request telemetry, made from one `RequestRecord` when the response is complete.

One structured JSON log line per HTTP request on the `cormorant.requests` logger, the usage
record, the HTTP metrics, the trace spans and the drift monitor's feature rows.
`TelemetryMiddleware` (pure ASGI, outside auth so refusals are seen too) opens the record,
notes the response status, the error code of error bodies and whether it streamed, and
closes it. Engine outputs reach the record through a context variable: the engine wrapper
(gateway.telemetry.metrics.InstrumentedEngine) runs inside the tasks the request's handler starts,
which inherit the request's context, so no serving code has to pass the record along.
No prompt or completion text is logged unless `log_prompts` is on.
The probes and /metrics are not logged: an orchestrator polling them would drown the log.
Imports gateway modules, starlette types and plain frontend types.
"""
from __future__ import annotations

import asyncio
import contextvars
import datetime as dt
import json
import logging
import sqlite3
import sys
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cormorant.frontend.outputs import RequestOutput
from cormorant.gateway.telemetry.drift import DriftCollector, DriftConfig, DriftMonitor
from cormorant.gateway.telemetry.metrics import InstrumentedEngine, Metrics
from cormorant.gateway.telemetry.tracing import Tracing, TracingUnavailable
from cormorant.gateway.telemetry.usage import (ANONYMOUS, UsageEvent, UsageStore, open_usage_store,
                                               utc_day)

request_logger = logging.getLogger("cormorant.requests")
logger = logging.getLogger("cormorant.gateway")

QUIET_PATHS = frozenset({"/health", "/ready", "/metrics"})
MAX_ERROR_BODY = 4096  # bytes of an error response kept to read its error code
TRACE_HEADERS = (b"traceparent", b"tracestate")

CURRENT: contextvars.ContextVar["RequestRecord | None"] = contextvars.ContextVar(
    "cormorant_request_record", default=None)


def observe_current(labels: tuple[str, str], out: RequestOutput) -> None:
    """The InstrumentedEngine hook: hand an engine output to the request being served."""
    record = CURRENT.get()
    if record is not None:
        record.observe(labels, out)


def _secs(value: float | None) -> float | None:
    return None if value is None else round(max(0.0, value), 6)


class RequestRecord:
    """What one HTTP request did, gathered while it runs and read once it is over."""

    def __init__(self, scope: Scope) -> None:
        self.start_mono = time.monotonic()
        self.start_wall_ns = time.time_ns()
        # The same dict as request.state: the auth layer's principal lands here later.
        state = scope.setdefault("state", {})
        self.scope_state = state
        self.method: str = scope.get("method", "")
        self.path: str = scope.get("path", "")
        self.headers = {k.decode("latin-1"): v.decode("latin-1")
                        for k, v in scope.get("headers", ()) if k in TRACE_HEADERS}
        self.end_mono: float | None = None
        self.status: int | None = None
        self.error_code: str | None = None
        self.is_stream = False
        self.model: str | None = None
        self.model_version = ""
        self.outputs: dict[str, RequestOutput] = {}  # engine request id -> latest output

    def observe(self, labels: tuple[str, str], out: RequestOutput) -> None:
        self.model, self.model_version = labels
        self.outputs[out.req_id] = out

    @property
    def request_id(self) -> str | None:
        return self.scope_state.get("request_id")  # set by the server's RequestIdMiddleware

    @property
    def key_id(self) -> str | None:
        """The auth layer puts a Principal with a key_id on request.state (this scope's
        state) once it has checked the key."""
        return getattr(self.scope_state.get("principal"), "key_id", None)

    # --- derived -----------------------------------------------------------------------------

    def tokens(self) -> tuple[int, int, int]:
        """(prompt, completion, cached) over the engine requests the engine accepted."""
        ran = [out for out in self.outputs.values() if out.error is None]
        return (sum(len(out.prompt_token_ids) for out in ran),
                sum(out.num_generated_tokens for out in ran),
                sum(out.num_cached_tokens for out in ran))

    def engine_times(self) -> tuple[float | None, float | None, float | None, float | None]:
        """(first engine arrival, first scheduled, first token, last finish), monotonic."""
        outs = list(self.outputs.values())

        def pick(fn, values):
            values = [v for v in values if v is not None]
            return fn(values) if values else None

        finished = [out.finished_time for out in outs]
        return (pick(min, [out.arrival_time for out in outs]),
                pick(min, [out.first_scheduled_time for out in outs]),
                pick(min, [out.first_token_time for out in outs]),
                None if None in finished else pick(max, finished))

    def queue_time(self) -> float | None:
        waits = [out.first_scheduled_time - out.arrival_time for out in self.outputs.values()
                 if out.first_scheduled_time is not None]
        return max(waits) if waits else None

    def finish_reasons(self) -> list[str]:
        reasons: list[str] = []
        for out in self.outputs.values():
            for o in out.outputs:
                reason = "error" if out.error else (o.finish_reason or "abort")
                if reason not in reasons:
                    reasons.append(reason)
        return reasons

    @property
    def failed(self) -> bool:
        return (self.status or 500) >= 400 or any(
            out.error or not out.finished for out in self.outputs.values())

    def log_fields(self) -> dict[str, Any]:
        prompt_tokens, completion_tokens, cached_tokens = self.tokens()
        _, _, first_token, _ = self.engine_times()
        end = self.end_mono if self.end_mono is not None else time.monotonic()
        return {
            "ts": dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds"),
            "event": "request", "request_id": self.request_id, "method": self.method,
            "path": self.path, "status": self.status, "error_code": self.error_code,
            "key_id": self.key_id, "model": self.model, "model_version": self.model_version,
            "stream": self.is_stream, "num_engine_requests": len(self.outputs),
            "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "cached_tokens": cached_tokens, "queue_time_s": _secs(self.queue_time()),
            "ttft_s": _secs(None if first_token is None else first_token - self.start_mono),
            "total_time_s": _secs(end - self.start_mono),
            "finish_reason": ",".join(self.finish_reasons()) or None,
        }

    def span_attributes(self) -> dict[str, Any]:
        prompt_tokens, completion_tokens, cached_tokens = self.tokens()
        attributes = {"http.request.method": self.method, "url.path": self.path,
                      "http.response.status_code": self.status or 500,
                      "cormorant.request_id": self.request_id or "",
                      "cormorant.key_id": self.key_id or "",
                      "gen_ai.usage.input_tokens": prompt_tokens,
                      "gen_ai.usage.output_tokens": completion_tokens,
                      "cormorant.cached_tokens": cached_tokens,
                      "gen_ai.response.finish_reasons": self.finish_reasons()}
        if self.model:
            attributes["gen_ai.request.model"] = self.model
        return attributes


class Telemetry:
    """The per-app sinks a finished RequestRecord goes to."""

    def __init__(self, metrics: Metrics, usage: UsageStore | None = None,
                 tracing: Tracing | None = None, log_prompts: bool = False,
                 drift: DriftMonitor | None = None) -> None:
        self.metrics = metrics
        self.usage = usage
        self.tracing = tracing
        self.log_prompts = log_prompts
        self.drift = drift
        self.drift_collector: DriftCollector | None = None
        if drift is not None:
            self.drift_collector = DriftCollector(drift)
            metrics.registry.register(self.drift_collector)
        self._tokenizers: dict[str, Any] = {}

    def instrument(self, engine: Any, model_name: str, model_version: str = ""
                   ) -> InstrumentedEngine:
        """The engine client the server should use for this model version: feeds metrics
        (labelled with name and version) and request records."""
        self._tokenizers[model_name] = engine.tokenizer
        return InstrumentedEngine(engine, self.metrics, (model_name, model_version),
                                  observe_current)

    def finish(self, record: RequestRecord) -> None:
        try:
            self.metrics.observe_http(record.status or 500, record.error_code, record.key_id)
            self._log(record)
            if self.usage is not None and record.outputs:
                self.usage.record(self._usage_event(record))
            if self.tracing is not None:
                self.tracing.emit(record)
            if self.drift is not None and record.outputs and (record.status or 500) < 400:
                self._observe_drift(record)
        except Exception:  # telemetry must never turn a served request into a failure
            logger.exception("telemetry: could not finish request %s", record.request_id)

    def _observe_drift(self, record: RequestRecord) -> None:
        tokenizer = self._tokenizers.get(record.model or "")
        decode = None if tokenizer is None else (
            lambda ids: tokenizer.decode(ids, skip_special_tokens=True))
        self.drift.observe_outputs((record.model or "", record.model_version),
                                   record.outputs.values(), decode)

    def close(self) -> None:
        if self.drift is not None:
            self.drift.close()
        if self.usage is not None:
            self.usage.close()
        if self.tracing is not None:
            self.tracing.shutdown()

    def _usage_event(self, record: RequestRecord) -> UsageEvent:
        prompt_tokens, completion_tokens, cached_tokens = record.tokens()
        return UsageEvent(day=utc_day(), key_id=record.key_id or ANONYMOUS,
                          model=record.model or "",
                          model_version=record.model_version, prompt_tokens=prompt_tokens,
                          completion_tokens=completion_tokens, cached_tokens=cached_tokens,
                          failed=record.failed)

    def _log(self, record: RequestRecord) -> None:
        level = logging.WARNING if (record.status or 500) >= 500 else logging.INFO
        if not request_logger.isEnabledFor(level):
            return
        fields = record.log_fields()
        if self.log_prompts and record.outputs:
            tokenizer = self._tokenizers.get(record.model or "")
            outs = list(record.outputs.values())
            if tokenizer is not None:
                fields["prompt"] = [tokenizer.decode(out.prompt_token_ids,
                                                     skip_special_tokens=False) for out in outs]
            fields["completion"] = [o.text for out in outs for o in out.outputs]
        request_logger.log(level, json.dumps(fields, ensure_ascii=False,
                                             separators=(",", ":")))


class TelemetryConfigError(ValueError):
    """A telemetry setting the server cannot honour (bad usage database, tracing missing)."""


def build_telemetry(max_model_len: int, *, usage_db: str | None = None,
                    otlp_endpoint: str | None = None, log_prompts: bool = False,
                    drift: DriftConfig | None = None) -> Telemetry:
    """Everything one app needs; a setting that cannot work fails here, before serving.
    drift: None turns drift monitoring off."""
    try:
        monitor = DriftMonitor(drift) if drift is not None else None
    except (OSError, ValueError) as exc:
        raise TelemetryConfigError(f"drift reference: {exc}") from None
    try:
        usage = open_usage_store(usage_db)
    except (NotImplementedError, sqlite3.Error, OSError) as exc:
        from cormorant.gateway.telemetry.usage import redact_url

        raise TelemetryConfigError(f"usage database {redact_url(usage_db)!r}: {exc}") from None
    try:
        tracing = Tracing.from_endpoint(otlp_endpoint)
    except TracingUnavailable as exc:
        usage.close()
        raise TelemetryConfigError(str(exc)) from exc
    return Telemetry(Metrics(max_model_len), usage, tracing, log_prompts, monitor)


def _error_code(body: bytes) -> str | None:
    """The `code` of an OpenAI-shaped error body; kept to [a-z0-9_] so a label stays tame."""
    try:
        code = json.loads(body)["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return None
    if not isinstance(code, str):
        return None
    code = "".join(ch for ch in code.lower() if ch.isalnum() or ch == "_")[:64]
    return code or None


class TelemetryMiddleware:
    def __init__(self, app: ASGIApp, telemetry: Telemetry) -> None:
        self.app = app
        self.telemetry = telemetry

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in QUIET_PATHS:
            await self.app(scope, receive, send)
            return
        record = RequestRecord(scope)
        error_body = bytearray()

        async def send_noting(message: Message) -> None:
            if message["type"] == "http.response.start":
                record.status = message["status"]
                for key, value in message.get("headers", ()):
                    if key.lower() == b"content-type":
                        record.is_stream = value.startswith(b"text/event-stream")
            elif message["type"] == "http.response.body" and (record.status or 0) >= 400:
                room = MAX_ERROR_BODY - len(error_body)
                error_body.extend(message.get("body", b"")[:max(0, room)])
            await send(message)

        token = CURRENT.set(record)
        try:
            await self.app(scope, receive, send_noting)
        except asyncio.CancelledError:
            record.status = record.status or 499  # the server gave up on a gone client
            raise
        except BaseException:
            record.status = record.status or 500
            raise
        finally:
            CURRENT.reset(token)
            record.end_mono = time.monotonic()
            record.error_code = _error_code(bytes(error_body)) if error_body else None
            self.telemetry.finish(record)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at emit time (it may be replaced after start-up, by a
    test runner's capture or a daemon wrapper), never to a stream that was since closed."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def configure_request_log(stream: Any = None) -> logging.Logger:
    """Send `cormorant.requests` lines, bare JSON, to `stream` (stderr by default) whatever
    the root logger's format and level: an access log is not debugging output."""
    if not any(getattr(h, "_cormorant_requests", False) for h in request_logger.handlers):
        handler = logging.StreamHandler(stream) if stream is not None else _StderrHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler._cormorant_requests = True  # type: ignore[attr-defined]
        request_logger.addHandler(handler)
    request_logger.setLevel(logging.INFO)
    request_logger.propagate = False
    return request_logger
