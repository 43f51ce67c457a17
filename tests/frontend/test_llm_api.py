"""The public API's edges: prompt forms, normalization, memory sizing, errors."""
from __future__ import annotations

import pytest

from cormorant import LLM, SamplingParams
from cormorant.config import CacheConfig, SchedulerConfig
from cormorant.runner.kv_cache import bytes_per_block, num_kv_blocks


@pytest.fixture(scope="module")
def llm(tiny_llama):
    return LLM(tiny_llama, block_size=8, num_kv_blocks=64, normalize_nfc=True,
               strip_control_chars=True)


def test_string_and_token_prompts_agree(llm):
    params = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)
    ids = llm.tokenizer.encode("The quick brown fox")
    by_text = llm.generate("The quick brown fox", params)[0]
    by_ids = llm.generate([ids], params)[0]
    assert by_text.prompt_token_ids == ids
    assert by_text.outputs[0].token_ids == by_ids.outputs[0].token_ids


def test_normalization_applies_nfc_and_strips_controls(llm):
    decomposed = "Cafe\u0301\x07"  # e + combining acute, then BEL
    assert llm.encode(decomposed) == llm.tokenizer.encode("Caf\u00e9")
    plain = LLM(llm.config.model, block_size=8, num_kv_blocks=16)
    assert plain.encode(decomposed) != plain.encode("Caf\u00e9")


def test_sampling_params_are_validated(llm):
    with pytest.raises(ValueError, match="top_p"):
        llm.generate("hi", SamplingParams(top_p=0.0))
    with pytest.raises(ValueError, match="empty"):
        llm.generate([[]], SamplingParams())


def test_kv_blocks_follow_available_memory(tiny_llama, llm):
    import torch

    model = llm.model_config
    cache = CacheConfig(block_size=16, memory_fraction=0.001)
    sched = SchedulerConfig(max_num_seqs=4096, max_model_len=2048)
    small = num_kv_blocks(model, cache, sched, torch.float32, torch.device("cpu"))
    double = num_kv_blocks(model, CacheConfig(block_size=16, memory_fraction=0.002), sched,
                           torch.float32, torch.device("cpu"))
    assert small >= 1 and abs(double - 2 * small) <= 2
    per_block = bytes_per_block(model, 16, torch.float32)
    assert per_block == 2 * model.num_layers * 16 * model.num_kv_heads * model.head_dim * 4
    sized = LLM(tiny_llama, block_size=16, memory_fraction=0.001)
    assert sized.engine.runner.num_blocks == pytest.approx(small, rel=0.05)
