"""Prometheus metrics under vLLM's names plus cormorant's own, one CollectorRegistry per app.

vLLM's names keep existing vLLM Grafana dashboards working. Never the process-global registry:
several apps (and tests) in one process must not collide.
Three feeds:
- `EngineStatsCollector`: gauges and engine counters read from `engine.stats()` at scrape
  time (running/waiting, KV usage as a 0-1 fraction, preemptions, prefix-cache tokens), so a
  scrape always sees the engine's current state and nothing polls in between.
- `InstrumentedEngine`: wraps an engine client; every RequestOutput that passes through feeds
  the token counters and the latency histograms (vLLM's bucket boundaries), and an optional
  hook (the per-HTTP-request record of gateway.telemetry.request_log).
- `Metrics.observe_http`: status, rejections by reason and rate-limited requests by key id,
  fed by the request-log middleware once a response is complete.
Imports prometheus_client, starlette/fastapi (the /metrics route) and plain frontend types.
"""
from __future__ import annotations

import contextvars
import logging
import time
from types import SimpleNamespace
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import prometheus_client
from fastapi import APIRouter
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import choose_encoder
from starlette.requests import Request
from starlette.responses import Response

from cormorant.frontend.outputs import RequestOutput

logger = logging.getLogger("cormorant.gateway")

# The `_created` series double every counter and histogram and no dashboard reads them; vLLM
# turns them off the same way (a process-wide prometheus_client switch).
prometheus_client.disable_created_metrics()

# vLLM's bucket boundaries (vllm/v1/metrics/loggers.py), so its dashboards' quantiles match.
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5,
                5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0,
               7.5, 10.0, 20.0, 40.0, 80.0)
REQUEST_LATENCY_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0,
                           40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)
N_BUCKETS = (1, 2, 5, 10, 20)
FINISH_REASONS = ("stop", "length", "abort")
MODEL = ["model_name", "model_version"]
PER_MODEL_SERIES = ("prompt_tokens", "generation_tokens", "ttft", "itl", "tpot", "request_tpot",
                    "e2e", "queue_time", "inference_time", "prefill_time", "decode_time",
                    "request_prompt_tokens", "request_generation_tokens",
                    "request_max_generation_tokens", "request_params_n",
                    "request_params_max_tokens")  # version "" for an unversioned model


def build_1_2_5_buckets(max_value: int) -> list[int]:
    """1, 2, 5, 10, 20, 50, ... up to max_value (vLLM's token-count buckets)."""
    buckets, scale = [], 1
    while True:
        for mantissa in (1, 2, 5):
            if mantissa * scale > max_value:
                return buckets
            buckets.append(mantissa * scale)
        scale *= 10


class Metrics:
    """Every metric family of one app, registered in `self.registry`."""

    # The request-phase histograms, made in one loop in _init_latencies.
    e2e: Histogram
    queue_time: Histogram
    inference_time: Histogram
    prefill_time: Histogram
    decode_time: Histogram

    def __init__(self, max_model_len: int, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self._engines: dict[str, Any] = {}
        self._per_model: list[Counter | Histogram] = []  # families labelled by model_name only
        self._bound: dict[tuple[str, str], SimpleNamespace] = {}
        self.registry.register(EngineStatsCollector(lambda: self._engines.items()))
        self.prompt_tokens = self._counter("vllm:prompt_tokens",
                                           "Number of prefill tokens processed.")
        self.generation_tokens = self._counter("vllm:generation_tokens",
                                               "Number of generation tokens processed.")
        self.request_success = Counter("vllm:request_success",
                                       "Count of finished requests (per choice), by reason.",
                                       MODEL + ["finished_reason"], registry=self.registry)
        self.response_cache_lookups = self._counter("cormorant_response_cache_lookups",
                                                    "Response-cache lookups.")
        self.response_cache_hits = self._counter("cormorant_response_cache_hits",
                                                 "Response-cache lookups answered from the "
                                                 "cache.")
        self._init_latencies()
        self._init_sizes(build_1_2_5_buckets(max(1, max_model_len)))
        self._init_http(self.registry)

    def _counter(self, name: str, doc: str) -> Counter:
        family = Counter(name, doc, MODEL, registry=self.registry)
        self._per_model.append(family)
        return family

    def _histogram(self, name: str, doc: str, buckets: Iterable[float]) -> Histogram:
        family = Histogram(name, doc, MODEL, buckets=tuple(buckets), registry=self.registry)
        self._per_model.append(family)
        return family

    def _init_latencies(self) -> None:
        histogram = self._histogram
        self.ttft = histogram("vllm:time_to_first_token_seconds",
                              "Histogram of time to first token in seconds.", TTFT_BUCKETS)
        self.itl = histogram("vllm:inter_token_latency_seconds",
                             "Histogram of inter-token latency in seconds.", ITL_BUCKETS)
        # The older name of the same observations: vLLM's example dashboard still plots it.
        self.tpot = histogram("vllm:time_per_output_token_seconds",
                              "Histogram of time per output token in seconds.", ITL_BUCKETS)
        self.request_tpot = histogram("vllm:request_time_per_output_token_seconds",
                                      "Histogram of time per output token, per request.",
                                      ITL_BUCKETS)
        for attr, name, phase in (("e2e", "e2e_request_latency", None),
                                  ("queue_time", "request_queue_time", "WAITING"),
                                  ("inference_time", "request_inference_time", "RUNNING"),
                                  ("prefill_time", "request_prefill_time", "PREFILL"),
                                  ("decode_time", "request_decode_time", "DECODE")):
            doc = (f"Histogram of time spent in {phase} phase for request." if phase else
                   "Histogram of e2e request latency in seconds.")
            setattr(self, attr, histogram(f"vllm:{name}_seconds", doc, REQUEST_LATENCY_BUCKETS))

    def _init_sizes(self, token_buckets: list[int]) -> None:
        histogram = self._histogram
        self.request_prompt_tokens = histogram("vllm:request_prompt_tokens",
                                               "Number of prefill tokens processed.",
                                               token_buckets)
        self.request_generation_tokens = histogram("vllm:request_generation_tokens",
                                                   "Number of generation tokens processed.",
                                                   token_buckets)
        self.request_max_generation_tokens = histogram(
            "vllm:request_max_num_generation_tokens",
            "Histogram of maximum number of requested generation tokens.", token_buckets)
        self.request_params_n = histogram("vllm:request_params_n",
                                          "Histogram of the n request parameter.", N_BUCKETS)
        self.request_params_max_tokens = histogram("vllm:request_params_max_tokens",
                                                   "Histogram of the max_tokens request "
                                                   "parameter.", token_buckets)

    def _init_http(self, reg: CollectorRegistry) -> None:
        self.http_requests = Counter("cormorant_http_requests",
                                     "HTTP requests answered, by status code.", ["status"],
                                     registry=reg)
        self.rejections = Counter("cormorant_requests_rejected",
                                  "Error responses, by the OpenAI error code (the reason) and "
                                  "status.", ["reason", "status"], registry=reg)
        self.rate_limited = Counter("cormorant_rate_limited_requests",
                                    "Requests refused with 429, by API key id.", ["key_id"],
                                    registry=reg)

    # --- feeds --------------------------------------------------------------------------------

    def add_engine(self, labels: tuple[str, str], engine: Any) -> None:
        """Scrapes read `engine.stats()` under these (model name, version) labels. Every
        per-model series is created now, at zero, as vLLM does: a dashboard shows 0, not "no
        data", before the first request (and a rate() over a series born later misses its
        first increment)."""
        self._engines[labels] = engine
        for family in self._per_model:
            family.labels(*labels)
        for reason in FINISH_REASONS:
            self.request_success.labels(*labels, reason)

    def bound(self, labels: tuple[str, str]) -> SimpleNamespace:
        """The per-model series of one (model name, version), resolved once: `.labels()` costs
        microseconds (a lock and a dict lookup), and the trackers call it on every token."""
        children = self._bound.get(labels)
        if children is None:
            children = SimpleNamespace(**{name: getattr(self, name).labels(*labels)
                                          for name in PER_MODEL_SERIES})
            children.success = {reason: self.request_success.labels(*labels, reason)
                                for reason in FINISH_REASONS}
            self._bound[labels] = children
        return children

    def remove_engine(self, labels: tuple[str, str]) -> None:
        """An unloaded model's gauges stop; its counters stay (Prometheus expects that)."""
        self._engines.pop(labels, None)

    def observe_http(self, status: int, reason: str | None, key_id: str | None) -> None:
        """One finished HTTP response. 499 (client gone) is no rejection: nobody refused."""
        self.http_requests.labels(str(status)).inc()
        if status >= 400 and status != 499:
            self.rejections.labels(reason or f"http_{status}", str(status)).inc()
        if status == 429:
            self.rate_limited.labels(key_id or "anonymous").inc()

    def observe_response_cache(self, labels: tuple[str, str], hit: bool) -> None:
        """One response-cache lookup of a (model name, version), and whether it hit."""
        self.response_cache_lookups.labels(*labels).inc()
        if hit:
            self.response_cache_hits.labels(*labels).inc()

    def render(self, accept_header: str = "") -> tuple[bytes, str]:
        encoder, content_type = choose_encoder(accept_header)
        return encoder(self.registry), content_type


# The families EngineStatsCollector exports: (key, family type, name, help).
_ENGINE_FAMILIES = (
    ("running", GaugeMetricFamily, "vllm:num_requests_running",
     "Number of requests in model execution batches."),
    ("waiting", GaugeMetricFamily, "vllm:num_requests_waiting",
     "Number of requests waiting to be processed."),
    ("kv", GaugeMetricFamily, "vllm:kv_cache_usage_perc",
     "KV-cache usage. 1 means 100 percent usage."),
    # vLLM's pre-0.9 name of the same gauge; many deployed dashboards still plot it.
    ("gpu_kv", GaugeMetricFamily, "vllm:gpu_cache_usage_perc",
     "KV-cache usage. 1 means 100 percent usage. DEPRECATED: use vllm:kv_cache_usage_perc."),
    ("preempt", CounterMetricFamily, "vllm:num_preemptions",
     "Cumulative number of preemption from the engine."),
    ("pc_queries", CounterMetricFamily, "vllm:prefix_cache_queries",
     "Prefix cache queries, in terms of number of queried tokens."),
    ("pc_hits", CounterMetricFamily, "vllm:prefix_cache_hits",
     "Prefix cache hits, in terms of number of cached tokens."),
    ("steps", CounterMetricFamily, "cormorant_engine_steps",
     "Engine loop iterations that ran a batch."),
    ("alive", GaugeMetricFamily, "cormorant_engine_loop_alive",
     "1 while the engine loop thread runs."),
    ("since", GaugeMetricFamily, "cormorant_engine_seconds_since_last_step",
     "Seconds since the engine loop last iterated (an idle loop iterates about twice a second)."),
    ("wait_tokens", GaugeMetricFamily, "cormorant_num_waiting_prompt_tokens",
     "Prompt tokens of the waiting requests."),
)


class EngineStatsCollector:
    """Gauges and engine-side counters, computed from `stats()` when Prometheus scrapes."""

    def __init__(self, engines: Callable[[], Iterable[tuple[str, Any]]]) -> None:
        self._engines = engines

    def collect(self):
        fams = {key: family(name, doc, labels=MODEL)
                for key, family, name, doc in _ENGINE_FAMILIES}
        for labels, engine in list(self._engines()):
            try:
                stats = engine.stats()
            except Exception:  # a scrape must still answer; the loop gauge says what broke
                logger.exception("engine stats failed during a metrics scrape")
                fams["alive"].add_metric(list(labels), 0.0)
                continue
            self._add(fams, labels, stats)
        return list(fams.values())

    @staticmethod
    def _add(fams: dict, model_labels: tuple[str, str], stats: Any) -> None:
        labels = list(model_labels)
        total = max(1, stats.num_total_blocks)
        usage = 1.0 - stats.num_free_blocks / total
        fams["running"].add_metric(labels, stats.num_running)
        fams["waiting"].add_metric(labels, stats.num_waiting)
        fams["kv"].add_metric(labels, usage)
        fams["gpu_kv"].add_metric(labels, usage)
        fams["preempt"].add_metric(labels, getattr(stats, "num_preemptions", 0))
        fams["pc_queries"].add_metric(labels, getattr(stats, "prefix_cache_queries", 0))
        fams["pc_hits"].add_metric(labels, getattr(stats, "prefix_cache_hits", 0))
        fams["steps"].add_metric(labels, stats.steps)
        fams["alive"].add_metric(labels, 1.0 if stats.is_loop_alive else 0.0)
        fams["since"].add_metric(labels, max(0.0, time.monotonic() - stats.last_step_time))
        fams["wait_tokens"].add_metric(labels, stats.num_waiting_prompt_tokens)


class RequestTracker:
    """The metrics of one engine request, fed each RequestOutput as it passes."""

    def __init__(self, metrics: Metrics, labels: tuple[str, str], params: Any) -> None:
        self.m = metrics.bound(labels)  # the series of this (model name, version)
        self.params = params
        self.has_first_token = False
        self.last_token_times: dict[int, float] = {}  # per choice, as vLLM times each child
        self.last: RequestOutput | None = None

    def observe(self, out: RequestOutput, now: float) -> None:
        self.last = out
        m = self.m
        num_new = sum(o.num_new_tokens for o in out.outputs)
        if not num_new:
            if out.finished and out.error is None:
                self._finish(out)
            return
        m.generation_tokens.inc(num_new)
        is_first_output = not self.has_first_token
        if is_first_output:
            self.has_first_token = True
            m.prompt_tokens.inc(len(out.prompt_token_ids))
            if out.first_token_time is not None:
                m.ttft.observe(out.first_token_time - out.arrival_time)
        for o in out.outputs:
            num_steps = o.num_new_tokens  # several when a slow reader got steps coalesced
            if not num_steps:
                continue
            last = self.last_token_times.get(o.index)
            if last is None:  # this choice's first token has a TTFT, not an inter-token gap
                last = (out.first_token_time or now) if is_first_output else now
                num_steps -= 1
            if num_steps > 0:  # spread the gap evenly over the coalesced steps
                interval = max(0.0, now - last) / num_steps
                for _ in range(num_steps):
                    m.itl.observe(interval)
                    m.tpot.observe(interval)
            self.last_token_times[o.index] = now if num_steps > 0 else last
        if out.finished and out.error is None:
            self._finish(out)

    def _finish(self, out: RequestOutput) -> None:
        m = self.m
        for o in out.outputs:
            reason = o.finish_reason if o.finish_reason in FINISH_REASONS else "abort"
            m.success[reason].inc()
        end, first_token = out.finished_time, out.first_token_time
        scheduled = out.first_scheduled_time
        if end is not None:
            m.e2e.observe(end - out.arrival_time)
        if scheduled is not None:  # only when the frontend reports when the engine began
            m.queue_time.observe(scheduled - out.arrival_time)
            if end is not None:
                m.inference_time.observe(end - scheduled)
            if first_token is not None:
                m.prefill_time.observe(first_token - scheduled)
        num_generated = out.num_generated_tokens
        if end is not None and first_token is not None:
            m.decode_time.observe(end - first_token)
            if num_generated > len(out.outputs):
                per_token = (end - first_token) / (num_generated - len(out.outputs))
                m.request_tpot.observe(per_token)
        m.request_prompt_tokens.observe(len(out.prompt_token_ids))
        m.request_generation_tokens.observe(num_generated)
        m.request_max_generation_tokens.observe(
            max((len(o.token_ids) for o in out.outputs), default=0))
        m.request_params_n.observe(getattr(self.params, "n", 1))
        max_tokens = getattr(self.params, "max_tokens", None)
        if max_tokens:
            m.request_params_max_tokens.observe(max_tokens)

    def close(self) -> None:
        """The consumer stopped early (client gone, drain, engine death): count aborts."""
        last = self.last
        if last is None:  # gone before the first output (e.g. during a long prefill)
            self.m.success["abort"].inc(max(1, int(getattr(self.params, "n", 1) or 1)))
            return
        if last.finished:
            return
        for o in last.outputs:
            if not o.finished:
                self.m.success["abort"].inc()


OutputHook = Callable[[tuple[str, str], RequestOutput], None]


class InstrumentedEngine:
    """An engine client that feeds metrics (and an optional per-output hook) with everything
    `generate` yields. The rest of the EngineClient protocol is passed through unchanged."""

    def __init__(self, engine: Any, metrics: Metrics, labels: tuple[str, str],
                 on_output: OutputHook | None = None) -> None:
        self.inner = engine
        self.metrics = metrics
        self.labels = labels  # (served model name, version)
        self._on_output = on_output
        metrics.add_engine(labels, engine)

    # The EngineClient protocol, delegated.
    tokenizer = property(lambda self: self.inner.tokenizer)
    model_config = property(lambda self: self.inner.model_config)
    max_model_len = property(lambda self: self.inner.max_model_len)
    model_name = property(lambda self: self.inner.model_name)

    def stats(self):
        return self.inner.stats()

    async def abort(self, request_id: str) -> None:
        await self.inner.abort(request_id)

    def shutdown(self, *args, **kwargs) -> None:
        self.metrics.remove_engine(self.labels)
        self.inner.shutdown(*args, **kwargs)

    def add_request(self, request_id: str, prompt_token_ids: list[int], params: Any,
                    sink: Any, **kwargs) -> "InstrumentedHandle":
        handle = self.inner.add_request(request_id, prompt_token_ids, params, sink, **kwargs)
        return InstrumentedHandle(handle, RequestTracker(self.metrics, self.labels, params),
                                  self)

    async def generate(self, request_id: str, prompt_token_ids: list[int], params: Any,
                       *args, **kwargs) -> AsyncIterator[RequestOutput]:
        tracker = RequestTracker(self.metrics, self.labels, params)
        outputs = self.inner.generate(request_id, prompt_token_ids, params, *args, **kwargs)
        try:
            async for out in outputs:
                tracker.observe(out, time.monotonic())
                if self._on_output is not None:
                    self._on_output(self.labels, out)
                yield out
        finally:
            tracker.close()
            await outputs.aclose()  # closing the inner generator aborts the engine request


class InstrumentedHandle:
    """An engine request handle (add_request's) that feeds the metrics with what it takes.
    The output hook runs in the context the request was added in (the HTTP request's record
    is a context variable there), wherever the outputs are taken."""

    def __init__(self, handle: Any, tracker: RequestTracker, engine: InstrumentedEngine):
        self.inner = handle
        self.request_id = handle.request_id
        self._tracker = tracker
        self._engine = engine
        self._context = contextvars.copy_context()
        self._closed = False

    @property
    def finished(self) -> bool:
        return self.inner.finished

    def take(self) -> RequestOutput:
        out = self.inner.take()
        self._tracker.observe(out, time.monotonic())
        if self._engine._on_output is not None:
            self._context.run(self._engine._on_output, self._engine.labels, out)
        return out

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._tracker.close()
            self.inner.close()  # aborts the engine request unless it finished


def metrics_router(metrics: Metrics) -> APIRouter:
    """GET /metrics in Prometheus text (or OpenMetrics, when the scraper asks for it). Access
    control is the auth layer's (its route table gives /metrics its scope)."""
    router = APIRouter()

    @router.get("/metrics", include_in_schema=False)
    async def get_metrics(request: Request) -> Response:
        body, content_type = metrics.render(request.headers.get("accept", ""))
        return Response(body, media_type=None, headers={"content-type": content_type})

    return router
