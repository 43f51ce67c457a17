"""`kv_cache_dtype="fp8"` through the public API: greedy output against the same engine with
an fp32 cache, twice the blocks for the same memory, prefix caching and preemption.

Greedy tolerance (tiny random models: flat output distributions, the top token near 4%, so
free-running greedy outputs part ways within a few tokens under any perturbation): the fp32
cache's greedy continuations of 4 prompts x 32 tokens are fed back as prompts to the fp8
engine, whose prompt logprobs then give, at each of the 128 positions, its top-1 token and
its logprob of the fp32 choice. Measured: top-1 agreement 0.84 (Llama) and 0.90 (Qwen3),
mean |logprob difference| 0.13 and 0.07 nats. Asserted: agreement >= 0.75 and mean
difference < 0.25 nats.
"""
from __future__ import annotations

import pytest
import torch

from cormorant import LLM, SamplingParams
from cormorant.config import CacheConfig, SchedulerConfig
from cormorant.engine_args import EngineArgError
from cormorant.runner.kv_cache import bytes_per_block, num_kv_blocks

BLOCK = 8
PROMPTS = [[(i * 37 + j * 11) % 500 + 3 for j in range(8 + 6 * i)] for i in range(4)]


def greedy(n: int = 32, **kw) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True, **kw)


@pytest.fixture(scope="module")
def fp8_llm(tiny_llama):
    return LLM(tiny_llama, block_size=BLOCK, num_kv_blocks=128, kv_cache_dtype="fp8")


@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_greedy_close_to_the_fp32_cache(family, tiny_llama, tiny_qwen3, fp8_llm):
    path = tiny_llama if family == "llama" else tiny_qwen3
    full = LLM(path, block_size=BLOCK, num_kv_blocks=128)
    fp8 = fp8_llm if family == "llama" else LLM(path, block_size=BLOCK, num_kv_blocks=128,
                                                  kv_cache_dtype="fp8_e4m3")
    assert fp8.engine.runner.kv_caches[0].dtype == torch.float8_e4m3fn
    chosen = [o.outputs[0].token_ids for o in full.generate(PROMPTS, greedy())]
    forced = [p + list(c) for p, c in zip(PROMPTS, chosen)]
    scored = SamplingParams(temperature=0.0, max_tokens=1, prompt_logprobs=1)
    ref = full.generate(forced, scored)
    got = fp8.generate(forced, scored)
    agree, diffs = [], []
    for prompt, ref_out, out in zip(PROMPTS, ref, got):
        for pos in range(len(prompt), len(prompt) + 32):
            mine, theirs = out.prompt_logprobs[pos], ref_out.prompt_logprobs[pos]
            assert theirs.token_id == mine.token_id  # the fp32 choice, scored by both
            agree.append(max(mine.top, key=mine.top.get) == theirs.token_id)
            diffs.append(abs(mine.logprob - theirs.logprob))
    rate, mean_diff = sum(agree) / len(agree), sum(diffs) / len(diffs)
    print(f"{family}: top-1 agreement {rate:.3f}, mean |dlogprob| {mean_diff:.3f}")
    assert rate >= 0.75 and mean_diff < 0.25


def test_fp8_cache_holds_twice_the_blocks(tiny_llama, fp8_llm):
    model = fp8_llm.model_config
    per_block = bytes_per_block(model, 16, torch.float8_e4m3fn)
    assert 2 * per_block == bytes_per_block(model, 16, torch.bfloat16)
    assert 4 * per_block == bytes_per_block(model, 16, torch.float32)
    cache = CacheConfig(block_size=16, memory_fraction=0.001)
    sched = SchedulerConfig(max_num_seqs=4096, max_model_len=2048)
    cpu = torch.device("cpu")
    blocks = {dt: num_kv_blocks(model, cache, sched, dt, cpu)
              for dt in (torch.bfloat16, torch.float8_e4m3fn)}
    assert abs(blocks[torch.float8_e4m3fn] - 2 * blocks[torch.bfloat16]) <= 0.02 * blocks[
        torch.bfloat16]  # free RAM may move a little between the two readings
    sized = LLM(tiny_llama, block_size=16, memory_fraction=0.001, kv_cache_dtype="fp8",
                max_num_seqs=4096, max_model_len=2048)
    runner = sized.engine.runner
    assert runner.num_blocks == pytest.approx(blocks[torch.float8_e4m3fn], rel=0.05)
    assert sum(t.nbytes for t in runner.kv_caches) == runner.num_blocks * per_block


def test_prefix_cache_hit_under_fp8(tiny_llama, fp8_llm):
    shared = [(i * 7) % 400 + 3 for i in range(2 * BLOCK)]
    first = fp8_llm.generate([shared + [41, 42, 43]], greedy(8))[0]
    second = fp8_llm.generate([shared + [51, 52]], greedy(8))[0]
    assert first.num_cached_tokens == 0 and second.num_cached_tokens == 2 * BLOCK
    fresh = LLM(tiny_llama, block_size=BLOCK, num_kv_blocks=64, kv_cache_dtype="fp8",
                enable_prefix_caching=False)
    assert second.outputs[0].token_ids == fresh.generate(
        [shared + [51, 52]], greedy(8))[0].outputs[0].token_ids


def test_preemption_under_fp8(tiny_llama, fp8_llm):
    prompts = [[(i * 13 + j) % 400 + 3 for j in range(12 + 5 * i)] for i in range(4)]
    expected = [o.outputs[0].token_ids for o in fp8_llm.generate(prompts, greedy(24))]
    small = LLM(tiny_llama, block_size=BLOCK, num_kv_blocks=12, kv_cache_dtype="fp8")
    got = [o.outputs[0].token_ids for o in small.generate(prompts, greedy(24))]
    assert got == expected  # recomputed after preemption: the same fp8 bytes, the same tokens
    assert small.engine.stats().num_preemptions > 0
    assert small.engine.block_manager.num_free_blocks == 12


def test_unknown_kv_cache_dtype_is_refused(tiny_llama):
    with pytest.raises(EngineArgError, match="kv_cache_dtype.*auto, fp8, fp8_e4m3"):
        LLM(tiny_llama, kv_cache_dtype="fp8_e5m2")


def test_the_flag_and_the_registry_option_reach_the_cache_config():
    import argparse

    from cormorant.engine_args import add_engine_args, engine_config_from

    for command in ("serve", "generate", "chat", "bench"):
        parser = argparse.ArgumentParser()
        add_engine_args(parser, command)
        assert parser.parse_args([]).kv_cache_dtype == "auto"
        args = parser.parse_args(["--kv-cache-dtype", "fp8"])
        if command != "bench":  # bench hands it to its own engine settings (bench.context)
            assert engine_config_from(args, command).cache.cache_dtype == "fp8"
    registry = engine_config_from({"kv_cache_dtype": "fp8_e4m3"}, "registry", model="m")
    assert registry.cache.cache_dtype == "fp8_e4m3"
    with pytest.raises(EngineArgError, match="kv_cache_dtype"):
        engine_config_from({"kv_cache_dtype": 8}, "registry", model="m")
