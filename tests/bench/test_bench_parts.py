"""Unit tests of the benchmark's parts that need no engine: the transformers-peer token
accounting (against a fake continuous-batching manager), the serving statistics, the peer
process's timeout path."""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import pytest
import torch

from cormorant.bench.hf_peer import run_cb
from cormorant.bench.peers import run_peer_process
from cormorant.bench.serving import RequestResult, best_rate, summarize
from cormorant.bench.workloads import OfflineWorkload, ServingRun


@dataclass
class _Out:
    request_id: str
    generated_tokens: list[int]
    done: bool

    def is_finished(self) -> bool:
        return self.done


class _FakeManager:
    """Streams one token per get_result, round-robin, cumulative or as deltas."""

    def __init__(self, cumulative: bool, delay_s: float):
        self.cumulative, self.delay_s = cumulative, delay_s
        self.todo: dict[str, list[int]] = {}
        self.cancelled: list[str] = []

    def add_request(self, input_ids, request_id, max_new_tokens, streaming):
        assert streaming
        self.todo[request_id] = [0, max_new_tokens]

    def get_result(self, timeout):
        time.sleep(self.delay_s)
        live = [r for r, (n, m) in self.todo.items() if n < m]
        if not live:
            return None
        rid = min(live, key=lambda r: self.todo[r][0])
        state = self.todo[rid]
        state[0] += 1
        tokens = [1] * state[0] if self.cumulative else [1]
        return _Out(rid, tokens, state[0] == state[1])

    def is_running(self):
        return True

    def cancel_request(self, rid):
        self.cancelled.append(rid)


class _FakeModel:
    device = torch.device("cpu")

    def __init__(self, manager):
        self.manager = manager

    @contextlib.contextmanager
    def continuous_batching_context_manager(self, generation_config=None, block=True,
                                            timeout=None, warmup=True):
        yield self.manager


WORKLOAD = OfflineWorkload("w", [[1, 2], [3, 4], [5]], [3, 5, 4], 0.6, "fake")


@pytest.mark.parametrize("cumulative", [True, False])
def test_peer_counts_streamed_tokens(cumulative):
    notes: list[str] = []
    result = run_cb(_FakeModel(_FakeManager(cumulative, 0.0)), WORKLOAD, 30.0, notes)
    assert result["complete"] and result["output_tokens"] == 12
    # this fake's add_request takes neither eos_token_id nor persistent_manager: dropped, noted
    assert any("eos_token_id" in n for n in notes)


def test_peer_capped_run_counts_the_prefix():
    manager = _FakeManager(True, 0.01)
    notes: list[str] = []
    result = run_cb(_FakeModel(manager), WORKLOAD, 0.08, notes)
    assert not result["complete"] and 0 < result["output_tokens"] < 12
    assert any(n.startswith("capped") for n in notes)
    assert manager.cancelled  # unfinished requests are cancelled, not left running


def test_peer_timeout_is_reported_not_raised(tmp_path):
    spec = {"kind": "cb", "bench": "b1", "scale": "tiny", "models": ["tiny-qwen3"],
            "device": "cpu", "dtype": "float32", "cap_s": 1}
    result = run_peer_process(spec, timeout_s=0.5, log_path=tmp_path / "peer.log")
    assert result == {"available": False, "reason": result["reason"]}
    assert "timed out" in result["reason"]


def _result(send, first, events, tokens):
    return RequestResult(send=send, end=events[-1], first_token=first, event_times=events,
                         output_tokens=tokens)


def test_serving_summary():
    run = ServingRun(2.0, [[1]] * 3, [0.0, 0.5, 1.0], 4)
    results = [_result(0.0, 0.1, [0.1, 0.2, 0.3, 0.4], 4),
               _result(0.5, 0.7, [0.7, 0.8, 0.9, 1.0], 4),
               RequestResult(send=1.0, end=1.1, error="HTTP 503")]
    s = summarize(run, results, wall=1.1, lags=[0.001])
    assert s["completed"] == 2 and s["errors"] == ["HTTP 503"]
    assert s["output_tokens"] == 8
    assert s["ttft_ms"]["p50"] == pytest.approx(150)
    assert s["itl_ms"]["mean"] == pytest.approx(100)
    assert s["tpot_ms"]["mean"] == pytest.approx(100)
    assert best_rate([s]) is None  # a failed request disqualifies the rate
    ok = {**s, "completed": 3, "rate": 1.0}
    assert best_rate([ok, {**ok, "rate": 4.0, "ttft_ms": {"p99": 2000.0}}])["rate"] == 1.0

