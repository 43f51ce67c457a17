"""The request log (one JSON line per request on `cormorant.requests`, no text unless asked)
and the OpenTelemetry spans, over real HTTP against the real app and a tiny real engine. The
spans go to a real OTLP/HTTP receiver on a loopback port and are decoded from protobuf."""
from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "server"))
from server_helpers import ServerThread, running_server, tiny_engine_fixture  # noqa: E402

MODEL = "tiny-log"
FIELDS = {"ts", "event", "request_id", "method", "path", "status", "error_code", "key_id",
          "model", "model_version", "stream", "num_engine_requests", "prompt_tokens",
          "completion_tokens", "cached_tokens", "queue_time_s", "ttft_s", "total_time_s",
          "finish_reason"}


class Lines(logging.Handler):
    """Collects the raw lines of the request logger (as its stream handler would write)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())

    def for_id(self, request_id: str, timeout: float = 10.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        while True:  # the line is written once the response has fully gone out
            found = [json.loads(line) for line in self.lines if request_id in line]
            if found or time.monotonic() > deadline:
                return found
            time.sleep(0.02)


@pytest.fixture
def lines():
    logger = logging.getLogger("cormorant.requests")
    handler, level = Lines(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


engine = tiny_engine_fixture("engine")


@pytest.fixture(scope="module")
def server(engine):
    with running_server(engine, served_model_name=MODEL, model_version="abc123") as server:
        yield server


def post(server, path: str, body: dict, request_id: str) -> httpx.Response:
    return httpx.post(server.url + path, json=body, headers={"x-request-id": request_id},
                      timeout=60)


def test_one_line_per_request_without_text(server, lines):
    rid, secret = f"log-{uuid.uuid4().hex}", f"secret-{uuid.uuid4().hex}"
    response = post(server, "/v1/completions", {"model": MODEL, "prompt": secret,
                                                "max_tokens": 5, "ignore_eos": True}, rid)
    assert response.status_code == 200
    [line] = lines.for_id(rid)
    assert set(line) == FIELDS
    usage = response.json()["usage"]
    assert line["event"] == "request" and line["status"] == 200 and line["error_code"] is None
    assert (line["method"], line["path"]) == ("POST", "/v1/completions")
    assert (line["model"], line["model_version"]) == (MODEL, "abc123")
    assert line["prompt_tokens"] == usage["prompt_tokens"]
    assert line["completion_tokens"] == usage["completion_tokens"] == 5
    assert line["cached_tokens"] == usage["prompt_tokens_details"]["cached_tokens"]
    assert line["finish_reason"] == "length" and line["stream"] is False
    assert line["key_id"] == "anonymous"  # no API keys on this server
    assert 0 < line["ttft_s"] <= line["total_time_s"]
    # No prompt or completion text: no such fields, and the prompt is nowhere in the line.
    assert not any(secret in text for text in lines.lines)


def test_streams_and_several_prompts(server, lines):
    rid = f"log-{uuid.uuid4().hex}"
    with httpx.stream("POST", server.url + "/v1/chat/completions", timeout=60,
                      headers={"x-request-id": rid},
                      json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
                            "max_tokens": 3, "stream": True}) as response:
        assert response.status_code == 200
        response.read()
    [line] = lines.for_id(rid)
    assert line["stream"] is True and line["status"] == 200 and line["path"].endswith("/chat/"
                                                                                     "completions")
    rid2 = f"log-{uuid.uuid4().hex}"
    post(server, "/v1/completions", {"model": MODEL, "prompt": ["a", "b", "c"], "max_tokens": 2,
                                     "n": 2}, rid2)
    [line] = lines.for_id(rid2)
    assert line["num_engine_requests"] == 3 and line["completion_tokens"] <= 12


def test_refusals_are_logged_with_their_code(server, lines):
    rid = f"log-{uuid.uuid4().hex}"
    assert post(server, "/v1/completions", {"model": "nope", "prompt": "x"}, rid
                ).status_code == 404
    [line] = lines.for_id(rid)
    assert (line["status"], line["error_code"]) == (404, "model_not_found")
    assert line["model"] is None and line["prompt_tokens"] == 0 and line["ttft_s"] is None


def test_probes_and_metrics_are_not_logged(server, lines):
    for path in ("/health", "/ready", "/metrics"):
        assert httpx.get(server.url + path, headers={"x-request-id": f"probe{path}"}
                         ).status_code == 200
    httpx.get(server.url + "/v1/models", headers={"x-request-id": "models-call"})
    assert lines.for_id("models-call")  # a later request's line is in...
    assert not [text for text in lines.lines if "probe/" in text]  # ...the probes' are not


def test_a_client_that_leaves_is_logged_as_aborted(server, lines):
    rid = f"log-{uuid.uuid4().hex}"
    with httpx.stream("POST", server.url + "/v1/completions", timeout=60,
                      headers={"x-request-id": rid},
                      json={"model": MODEL, "prompt": "Go on", "max_tokens": 300, "stream": True,
                            "ignore_eos": True}) as response:
        next(response.iter_lines())
    [line] = lines.for_id(rid)
    assert line["finish_reason"] == "abort" and 0 < line["completion_tokens"] < 300


def test_log_prompts_adds_the_text(engine, lines):
    server = ServerThread(engine, served_model_name=MODEL, log_prompts=True).start()
    try:
        rid = f"log-{uuid.uuid4().hex}"
        response = post(server, "/v1/completions", {"model": MODEL, "prompt": "Say something",
                                                    "max_tokens": 4}, rid)
        [line] = lines.for_id(rid)
        assert line["prompt"] == ["Say something"]
        assert line["completion"] == [response.json()["choices"][0]["text"]]
    finally:
        server.stop()


# --- tracing ------------------------------------------------------------------------------

class OTLPReceiver:
    """A real OTLP/HTTP endpoint (protobuf) on a loopback port, keeping the spans it gets."""

    def __init__(self) -> None:
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

        spans = self.spans = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers["content-length"]))
                request = trace_service_pb2.ExportTraceServiceRequest()
                request.ParseFromString(body)
                for resource in request.resource_spans:
                    for scope in resource.scope_spans:
                        spans.extend(scope.spans)
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_spans_reach_an_otlp_collector(engine):
    pytest.importorskip("opentelemetry.sdk", reason="tracing needs the optional OTel SDK")
    pytest.importorskip("opentelemetry.exporter.otlp.proto.http")
    receiver = OTLPReceiver()
    server = ServerThread(engine, served_model_name=MODEL, otlp_endpoint=receiver.url).start()
    trace_id, parent_id = uuid.uuid4().hex, uuid.uuid4().hex[:16]
    try:
        response = httpx.post(server.url + "/v1/completions", timeout=60, headers={
            "traceparent": f"00-{trace_id}-{parent_id}-01"},
            json={"model": MODEL, "prompt": "trace me", "max_tokens": 4, "ignore_eos": True})
        assert response.status_code == 200
    finally:
        server.stop()  # shuts the tracer provider down, which exports what is buffered
        receiver.close()
    ours = [s for s in receiver.spans if s.trace_id.hex() == trace_id]
    by_name = {s.name: s for s in ours}
    assert set(by_name) == {"cormorant.request", "admission", "queue", "prefill", "decode"}
    root = by_name["cormorant.request"]
    assert root.parent_span_id.hex() == parent_id  # joined the caller's trace
    for name in ("admission", "queue", "prefill", "decode"):
        span = by_name[name]
        assert span.parent_span_id == root.span_id
        assert root.start_time_unix_nano <= span.start_time_unix_nano <= span.end_time_unix_nano
        assert span.end_time_unix_nano <= root.end_time_unix_nano
    assert by_name["admission"].end_time_unix_nano <= by_name["queue"].start_time_unix_nano
    assert by_name["queue"].end_time_unix_nano <= by_name["prefill"].start_time_unix_nano
    assert by_name["prefill"].end_time_unix_nano <= by_name["decode"].start_time_unix_nano
    attributes = {a.key: a.value for a in root.attributes}
    assert attributes["http.response.status_code"].int_value == 200
    assert attributes["gen_ai.usage.output_tokens"].int_value == 4
    assert attributes["gen_ai.request.model"].string_value == MODEL


CHECK_LAZY = """
import sys
from cormorant.gateway.telemetry.request_log import TelemetryConfigError, build_telemetry
telemetry = build_telemetry(128)
assert telemetry.tracing is None
# (opentelemetry-api itself may be loaded: recent FastAPI imports it when present.)
print("sdk imported:", any(m.startswith(("opentelemetry.sdk", "opentelemetry.exporter"))
                           for m in sys.modules))
sys.modules["opentelemetry.sdk"] = None  # as if the SDK were not installed
try:
    build_telemetry(128, otlp_endpoint="http://127.0.0.1:4318")
except TelemetryConfigError as exc:
    print("refused:", exc)
"""


def test_tracing_is_lazy_and_refuses_without_the_sdk():
    out = subprocess.run([sys.executable, "-c", CHECK_LAZY], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    assert "sdk imported: False" in out
    assert "refused:" in out and "pip install opentelemetry-sdk" in out
