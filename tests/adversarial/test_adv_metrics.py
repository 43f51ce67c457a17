"""Requests that clients abandon are counted as aborts, also when they leave before their first
output: vllm:request_success_total{finished_reason="abort"} (the streaming case after the first
token is covered end to end by tests/gateway/test_metrics.py)."""
from __future__ import annotations


def test_request_closed_before_any_output_counts_its_choices_as_aborts():
    # The path a client takes when it leaves while its request has produced nothing yet
    # (e.g. during a long prefill): the tracker never saw an output.
    from cormorant.gateway.telemetry.metrics import Metrics, RequestTracker
    from cormorant.sampling_params import SamplingParams

    metrics = Metrics(max_model_len=512)
    labels = ("m", "")
    RequestTracker(metrics, labels, SamplingParams(n=3, max_tokens=4)).close()
    assert metrics.registry.get_sample_value("vllm:request_success_total", {
        "model_name": "m", "model_version": "", "finished_reason": "abort"}) == 3
