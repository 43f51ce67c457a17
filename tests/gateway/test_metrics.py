"""GET /metrics over real HTTP against the real app and a tiny real engine: vLLM's metric
names (so vLLM dashboards work), request metrics that follow the traffic exactly, gauges read
at scrape time, prefix-cache counters, rejections by reason, one registry per app, and the
shipped Grafana dashboard asking only for what is exported."""
from __future__ import annotations

import json
import re
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "server"))
from server_helpers import running_server, tiny_engine_fixture  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
MODEL = "tiny-metrics"
HTTP_SERIES = ("cormorant_http_requests", "cormorant_requests_rejected",
               "cormorant_rate_limited")  # the series without a model_name label
VLLM_SERIES = (
    "vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
    "vllm:gpu_cache_usage_perc", "vllm:num_preemptions_total", "vllm:prefix_cache_queries_total",
    "vllm:prefix_cache_hits_total", "vllm:prompt_tokens_total", "vllm:generation_tokens_total",
    "vllm:request_success_total", "vllm:time_to_first_token_seconds_bucket",
    "vllm:inter_token_latency_seconds_bucket", "vllm:time_per_output_token_seconds_bucket",
    "vllm:e2e_request_latency_seconds_bucket", "vllm:request_queue_time_seconds_bucket",
    "vllm:request_prefill_time_seconds_bucket", "vllm:request_decode_time_seconds_bucket",
    "vllm:request_inference_time_seconds_bucket", "vllm:request_prompt_tokens_bucket",
    "vllm:request_generation_tokens_bucket", "vllm:request_params_n_bucket",
    "vllm:request_params_max_tokens_bucket", "vllm:request_max_num_generation_tokens_bucket",
    "cormorant_response_cache_hits_total", "cormorant_response_cache_lookups_total",
    "cormorant_engine_loop_alive", "cormorant_engine_steps_total",
)


engine = tiny_engine_fixture("engine")


@pytest.fixture(scope="module")
def server(engine):
    with running_server(engine, served_model_name=MODEL) as server:
        yield server


@pytest.fixture(scope="module")
def strict_server(engine):
    """Same engine, its own app: an API key, one waiting request, 64 KiB bodies."""
    with running_server(engine, served_model_name=MODEL, api_key="sk-metrics",
                        max_waiting_requests=1, max_body_bytes=64 * 1024) as server:
        yield server


def scrape(server, **headers) -> dict[str, float]:
    """{'name{label=value,...}': value} of one scrape."""
    response = httpx.get(server.url + "/metrics", headers=headers)
    assert response.status_code == 200, response.text
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            samples[f"{s.name}{{{labels}}}"] = s.value
    return samples


def value(samples: dict, name: str, **labels) -> float:
    if not name.startswith(HTTP_SERIES):
        labels.setdefault("model_name", MODEL)
        labels.setdefault("model_version", "")  # the test's app is unversioned
    key = f"{name}{{{','.join(f'{k}={v}' for k, v in sorted(labels.items()))}}}"
    return samples.get(key, 0.0)


def test_vllm_metric_names_are_exported_from_the_start(server):
    samples = scrape(server)
    names = {key.split("{")[0] for key in samples}
    missing = [name for name in VLLM_SERIES if name not in names]
    assert not missing, missing
    assert value(samples, "cormorant_engine_loop_alive") == 1.0
    assert 0.0 <= value(samples, "vllm:kv_cache_usage_perc") <= 1.0
    # vLLM's bucket boundaries, so the dashboards' quantiles mean the same thing.
    assert value(samples, "vllm:time_to_first_token_seconds_bucket", le="0.001") >= 0
    assert "vllm:e2e_request_latency_seconds_bucket{le=7680.0,model_name=tiny-metrics,model_version=}" in samples
    text = httpx.get(server.url + "/metrics").headers["content-type"]
    assert text.startswith("text/plain")


def test_request_metrics_follow_the_traffic(server):
    before = scrape(server)
    out = server.client().completions.create(model=MODEL, prompt="Hello metrics", max_tokens=6,
                                             extra_body={"ignore_eos": True})
    stream = server.client().chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=4, n=2,
        stream=True, stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
    chat_usage = [chunk.usage for chunk in stream if chunk.usage][0]
    after = scrape(server)

    def delta(name: str, **labels) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("vllm:prompt_tokens_total") == out.usage.prompt_tokens + \
        chat_usage.prompt_tokens
    assert delta("vllm:generation_tokens_total") == 6 + 2 * 4
    assert delta("vllm:request_success_total", finished_reason="length") == 1 + 2
    assert delta("vllm:time_to_first_token_seconds_count") == 2
    assert delta("vllm:e2e_request_latency_seconds_count") == 2
    assert delta("vllm:request_decode_time_seconds_count") == 2
    # One inter-token latency per token after each choice's first (per choice, as vLLM).
    assert delta("vllm:inter_token_latency_seconds_count") == 5 + 2 * 3
    assert delta("vllm:request_generation_tokens_sum") == 6 + 8
    assert delta("vllm:request_params_n_sum") == 1 + 2
    assert delta("vllm:request_params_max_tokens_sum") == 6 + 4
    assert delta("vllm:e2e_request_latency_seconds_sum") > 0
    assert delta("cormorant_http_requests_total", status="200") == 2


def test_gauges_are_read_at_scrape_time(server):
    client = server.client()
    stream = client.completions.create(model=MODEL, prompt="A long story", max_tokens=400,
                                       stream=True, extra_body={"ignore_eos": True})
    chunks = iter(stream)
    next(chunks)  # generation is under way
    during = scrape(server)
    assert value(during, "vllm:num_requests_running") == 1
    assert value(during, "vllm:num_requests_waiting") == 0
    assert value(during, "vllm:kv_cache_usage_perc") > 0
    steps = value(during, "cormorant_engine_steps_total")
    assert value(scrape(server), "cormorant_engine_steps_total") > steps  # live, not cached
    stream.close()  # the client leaves: the engine aborts the request
    deadline = time.monotonic() + 10
    while value(scrape(server), "vllm:num_requests_running") != 0:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    after = scrape(server)
    assert value(after, "vllm:request_success_total", finished_reason="abort") == \
        value(during, "vllm:request_success_total", finished_reason="abort") + 1


def test_prefix_cache_counters_count_tokens(server):
    prompt = f"{uuid.uuid4().hex} " + "The quick brown fox jumps over the lazy dog. " * 8
    before = scrape(server)
    first = server.client().completions.create(model=MODEL, prompt=prompt, max_tokens=1)
    second = server.client().completions.create(model=MODEL, prompt=prompt, max_tokens=1)
    after = scrape(server)
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert first.usage.prompt_tokens_details.cached_tokens == 0 and cached >= 16
    hits = value(after, "vllm:prefix_cache_hits_total") - \
        value(before, "vllm:prefix_cache_hits_total")
    queries = value(after, "vllm:prefix_cache_queries_total") - \
        value(before, "vllm:prefix_cache_queries_total")
    assert hits == cached
    assert queries >= 2 * first.usage.prompt_tokens - 2  # the last token is never looked up


def test_rejections_are_counted_by_reason(strict_server):
    url, key = strict_server.url, {"authorization": "Bearer sk-metrics"}
    before = scrape(strict_server, **key)
    assert httpx.post(url + "/v1/completions", json={"model": MODEL, "prompt": "x"}
                      ).status_code == 401
    assert httpx.post(url + "/v1/completions", headers={"authorization": "Bearer nope"},
                      json={"model": MODEL, "prompt": "x"}).status_code == 401
    assert httpx.post(url + "/v1/completions", headers=key,
                      json={"model": "someone-else", "prompt": "x"}).status_code == 404
    assert httpx.post(url + "/v1/completions", headers=key,
                      json={"model": MODEL, "prompt": "x", "max_tokens": -1}).status_code == 400
    assert httpx.post(url + "/v1/completions", headers=key, content=b"{" + b" " * 70_000 + b"}"
                      ).status_code == 413
    # Two prompts never fit a waiting queue of one.
    assert httpx.post(url + "/v1/completions", headers=key,
                      json={"model": MODEL, "prompt": ["a", "b"]}).status_code == 503
    after = scrape(strict_server, **key)

    def delta(reason: str, status: int) -> float:
        name = "cormorant_requests_rejected_total"
        return (value(after, name, reason=reason, status=str(status))
                - value(before, name, reason=reason, status=str(status)))

    assert delta("missing_api_key", 401) == 1
    assert delta("invalid_api_key", 401) == 1
    assert delta("model_not_found", 404) == 1
    assert delta("invalid_value", 400) == 1
    assert delta("request_too_large", 413) == 1
    assert delta("server_overloaded", 503) == 1


def test_each_app_has_its_own_registry(server, strict_server):
    """Two apps in one process (one engine): request counters apart, engine gauges shared."""
    key = {"authorization": "Bearer sk-metrics"}
    strict_before = scrape(strict_server, **key)
    server.client().completions.create(model=MODEL, prompt="only here", max_tokens=2)
    strict_after = scrape(strict_server, **key)
    assert value(strict_after, "vllm:generation_tokens_total") == \
        value(strict_before, "vllm:generation_tokens_total")
    assert value(strict_after, "cormorant_engine_steps_total") > \
        value(strict_before, "cormorant_engine_steps_total")


def test_openmetrics_on_request(server):
    response = httpx.get(server.url + "/metrics",
                         headers={"accept": "application/openmetrics-text; version=1.0.0"})
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    assert response.text.rstrip().endswith("# EOF")


def test_concurrent_scrapes_during_traffic(server):
    """Scrapes run on the event loop next to streaming requests; neither disturbs the other."""
    errors: list[BaseException] = []

    def generate() -> None:
        try:
            server.client().completions.create(model=MODEL, prompt="busy", max_tokens=30,
                                               extra_body={"ignore_eos": True})
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=generate) for _ in range(4)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        assert value(scrape(server), "cormorant_engine_loop_alive") == 1
    for t in threads:
        t.join()
    assert not errors


def test_the_grafana_dashboard_queries_only_exported_metrics(server):
    """Every metric the shipped dashboard plots is one this server exports."""
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "cormorant-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", ())]
    assert len(exprs) > 20
    names = re.compile(r"(vllm:[a-z0-9_:]+|cormorant_[a-z0-9_]+)")
    queried = {m for e in exprs for m in names.findall(e)}
    families = set()
    for family in text_string_to_metric_families(httpx.get(server.url + "/metrics").text):
        families.add(family.name)
        families.update(s.name for s in family.samples)
    unknown = sorted(m for m in queried if m not in families and
                     re.sub(r"_(total|bucket|sum|count)$", "", m) not in families)
    assert not unknown, unknown
