"""Under TP = 2 (gloo, CPU) the scheduler's features run as at TP = 1: chunked prefill (a
16-token step budget under prompts of up to 40 tokens), preemption (a KV cache too small for
the batch) and prefix caching (a second pass over shared prefixes), with output identical to
TP = 1 under the same settings. The TP = 2 engine schedules asynchronously: each rank fills
the next step's input ids from its own sampled ids, so seeded sampling at temperature 0.8
matching TP = 1 shows that every rank samples the same ids. The weights are random (load_format "random"): drawn whole
and sharded, the same model at both sizes. Also: start-up refuses a size that does not fit."""
from __future__ import annotations

import dataclasses
import os
import re
import signal
import time

import pytest
import torch

from cormorant.config import ModelConfig
from cormorant.frontend.llm import LLM
from cormorant.runner.tp_executor import TensorParallelError, check_tensor_parallel
from cormorant.sampling_params import SamplingParams
from tp_helpers import GREEDY, PROMPTS, assert_same_generation, is_running, run

# Chunked (16-token budget), and the cache (10 blocks of 16) holds about half the batch.
STRESSED = dict(max_num_batched_tokens=16, num_kv_blocks=10, max_model_len=128,
                load_format="random")
LONG_PROMPTS = [list(range(10, 50)), list(range(60, 96)), list(range(100, 123)), [300, 301]]
SHARED = list(range(200, 240))  # two full blocks and a half, shared by every prompt
PREFIX_PROMPTS = [SHARED + [7], SHARED + [8, 9], SHARED + [10, 11, 12]]


SAMPLED = [SamplingParams(max_tokens=24, temperature=0.8, top_k=50, seed=seed, logprobs=1,
                          ignore_eos=True) for seed in (11, 12, 13, 14)]


@pytest.fixture(scope="module")
def tp1_runs(tiny_llama):
    return {"long": run(tiny_llama, LONG_PROMPTS, **STRESSED),
            "prefix": run(tiny_llama, PREFIX_PROMPTS, **STRESSED),
            "sampled": run(tiny_llama, PROMPTS, SAMPLED, **STRESSED)}


@pytest.fixture(scope="module")
def tp2(tiny_llama):
    with LLM(tiny_llama, seed=0, tensor_parallel_size=2, async_scheduling=True,
             **STRESSED) as llm:
        yield llm


def test_chunked_prefill_and_preemption_match_tp1(tp1_runs, tp2):
    reference, ref_stats = tp1_runs["long"]
    outputs = tp2.generate(LONG_PROMPTS, GREEDY)
    stats = tp2.engine.stats()
    assert_same_generation(reference, outputs)
    assert stats.num_preemptions > 0 and ref_stats.num_preemptions > 0
    # Every prompt longer than the budget was prefilled in chunks: more steps than tokens.
    assert stats.steps >= GREEDY.max_tokens + len(LONG_PROMPTS[0]) // 16


def test_prefix_cache_hits_match_tp1(tp1_runs, tp2):
    reference, _ = tp1_runs["prefix"]
    hits_before = tp2.engine.stats().prefix_cache_hits
    first = tp2.generate(PREFIX_PROMPTS, GREEDY)
    second = tp2.generate(PREFIX_PROMPTS, GREEDY)  # every shared block is cached by now
    assert_same_generation(reference, first)
    assert_same_generation(reference, second)
    assert tp2.engine.stats().prefix_cache_hits - hits_before >= 3 * 32


def test_seeded_sampling_matches_tp1(tp1_runs, tp2):
    reference, _ = tp1_runs["sampled"]
    outputs = tp2.generate(PROMPTS, SAMPLED)
    for ref, out in zip(reference, outputs):
        assert out.outputs[0].token_ids == ref.outputs[0].token_ids
        assert len(set(out.outputs[0].token_ids)) > 4  # sampled, not a greedy loop
        for ref_lp, out_lp in zip(ref.outputs[0].logprobs, out.outputs[0].logprobs):
            assert abs(out_lp.logprob - ref_lp.logprob) <= 1e-5


@pytest.mark.parametrize("size,message", [
    (3, "tensor_parallel_size 3 does not divide the model's attention heads (4)"),
    (8, "tensor_parallel_size 8 does not divide the model's attention heads (4)"),
    (0, "tensor_parallel_size must be at least 1")])
def test_start_up_refuses_a_size_that_does_not_fit(tiny_llama, size, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        LLM(tiny_llama, tensor_parallel_size=size)


def test_a_worker_dying_while_idle_ends_the_engine(tp2):
    """Last: it ends the module's engine. Rank 0 dies between steps; the executor's check
    (the engine loop's, between steps) names it, the other rank is reaped, steps refuse."""
    executor = tp2.engine.runner
    pids = executor.pids
    executor.check_alive()  # all well so far
    os.kill(pids[0], signal.SIGKILL)
    deadline = time.monotonic() + 10
    with pytest.raises(TensorParallelError, match=r"worker 0 exited \(killed by signal 9\)"):
        while time.monotonic() < deadline:
            executor.check_alive()
            time.sleep(0.05)
    assert not any(is_running(pid) for pid in pids)
    with pytest.raises(TensorParallelError):
        tp2.generate([[1, 2, 3]], GREEDY)


TINY = ModelConfig("LlamaForCausalLM", vocab_size=512, hidden_size=64, intermediate_size=128,
                   num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16,
                   max_position_embeddings=256)


@pytest.mark.parametrize("changes,message", [
    ({"num_heads": 8, "num_kv_heads": 3}, "neither divides nor is a multiple of the model's "
     "3 kv heads"),
    ({"vocab_size": 511}, "does not divide the model's vocabulary size (511)"),
    ({"intermediate_size": 129}, "does not divide the model's intermediate size (129)"),
])
def test_sizes_that_do_not_fit_the_model_are_named(changes, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        check_tensor_parallel(dataclasses.replace(TINY, **changes), 2, torch.device("cpu"))
    check_tensor_parallel(TINY, 2, torch.device("cpu"))  # the unchanged model fits


def test_more_ranks_than_cuda_devices_is_refused():
    size = torch.cuda.device_count() + 1  # one more than this machine has (CI: none)
    config = dataclasses.replace(TINY, num_heads=size, num_kv_heads=size,
                                 vocab_size=512 * size, intermediate_size=128 * size)
    with pytest.raises(ValueError, match=f"exceeds the {size - 1} CUDA devices from cuda:0"):
        check_tensor_parallel(config, size, torch.device("cuda"))
