"""Requests that clients abandon are counted as aborts, also when they leave before their first
output (queued behind another request): vllm:request_success_total{finished_reason="abort"}."""
from __future__ import annotations

import re
import time

import httpx

from server_helpers import ServerThread, start_engine, tiny_engine_config


def aborts(server) -> float:
    text = httpx.get(server.url + "/metrics", timeout=10).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith("vllm:request_success_total{") and 'finished_reason="abort"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def running(server) -> float:
    match = re.search(r"^vllm:num_requests_running\{[^}]*\} (\S+)$",
                      httpx.get(server.url + "/metrics", timeout=10).text, re.M)
    return float(match.group(1)) if match else 0.0


def _wait_for(condition, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} was never counted"
        time.sleep(0.05)


def test_abandoned_requests_count_as_aborts_even_before_their_first_output(tiny_llama):
    llm = start_engine(tiny_engine_config(tiny_llama, max_num_seqs=1))  # B waits behind A
    server = ServerThread(llm).start()
    try:
        before = aborts(server)
        body = {"model": server.model, "prompt": "Once upon a time", "max_tokens": 400,
                "ignore_eos": True, "stream": True}
        with httpx.Client(timeout=30) as a_client, httpx.Client(timeout=30) as b_client:
            with a_client.stream("POST", server.url + "/v1/completions", json=body) as a:
                next(a.iter_lines())  # A is generating
                with b_client.stream("POST", server.url + "/v1/completions", json=body) as b:
                    assert b.status_code == 200
                    time.sleep(0.3)  # B is queued: no output yet; its client leaves
                _wait_for(lambda: aborts(server) >= before + 1, "B's abort")
        deadline = time.monotonic() + 15
        while aborts(server) < before + 2 or running(server) != 0:
            assert time.monotonic() < deadline, (aborts(server) - before, running(server))
            time.sleep(0.1)
        assert aborts(server) == before + 2
    finally:
        server.stop()
        llm.shutdown()


def test_request_closed_before_any_output_counts_its_choices_as_aborts():
    # The path a client takes when it leaves while its request has produced nothing yet
    # (e.g. during a long prefill): the tracker never saw an output.
    from cormorant.gateway.metrics import Metrics, RequestTracker
    from cormorant.sampling_params import SamplingParams

    metrics = Metrics(max_model_len=512)
    labels = ("m", "")
    RequestTracker(metrics, labels, SamplingParams(n=3, max_tokens=4)).close()
    assert metrics.registry.get_sample_value("vllm:request_success_total", {
        "model_name": "m", "model_version": "", "finished_reason": "abort"}) == 3
