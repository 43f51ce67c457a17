"""Prefix-cache salts on a real tiny model: the offline LLM, the AsyncLLM engine thread and the
engine-process wire all carry EngineRequest.cache_salt to the block manager, where only equal
salts share cached blocks (tenant isolation, issue 21)."""
from __future__ import annotations

import asyncio

import pytest

from cormorant import LLM, SamplingParams
from cormorant.config import CacheConfig, EngineConfig, SchedulerConfig
from cormorant.engine.types import EngineRequest
from cormorant.frontend.async_llm import AsyncLLM
from cormorant.engine.messages import AddRequest, decode, encode

BLOCK = 8
PROMPT = [(i * 11) % 400 + 3 for i in range(3 * BLOCK + 2)]  # 3 full blocks + 2 tokens


def greedy() -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True)


@pytest.fixture(scope="module")
def llm(tiny_llama):
    return LLM(tiny_llama, block_size=BLOCK, num_kv_blocks=128, max_num_batched_tokens=256)


def test_offline_salts_share_blocks_only_when_equal(llm):
    prompt = [t + 1 for t in PROMPT]
    first = llm.generate([prompt], greedy(), cache_salt="a")[0]
    same = llm.generate([prompt], greedy(), cache_salt="a")[0]
    other = llm.generate([prompt], greedy(), cache_salt="b")[0]
    unsalted = llm.generate([prompt], greedy())[0]
    assert first.num_cached_tokens == 0
    assert same.num_cached_tokens == 3 * BLOCK
    assert other.num_cached_tokens == 0 and unsalted.num_cached_tokens == 0
    assert llm.generate([prompt], greedy())[0].num_cached_tokens == 3 * BLOCK
    # The salt changes what is shared, never what is computed.
    assert same.outputs[0].token_ids == other.outputs[0].token_ids == first.outputs[0].token_ids


def test_async_engine_carries_the_salt(tiny_llama):
    config = EngineConfig(model=tiny_llama, seed=0, cache=CacheConfig(block_size=BLOCK, num_blocks=128),
                          scheduler=SchedulerConfig(max_model_len=256))
    engine = AsyncLLM.from_config(config)

    async def cached(req_id: str, salt: str) -> int:
        final = None
        async for out in engine.generate(req_id, PROMPT, greedy(), cache_salt=salt):
            final = out
        return final.num_cached_tokens

    async def run() -> list[int]:
        return [await cached(f"r{i}", salt) for i, salt in enumerate(("x", "y", "x", ""))]

    try:
        assert asyncio.run(run()) == [0, 0, 3 * BLOCK, 0]
    finally:
        engine.shutdown()


def test_the_engine_process_wire_carries_the_salt():
    req = EngineRequest("a", [1, 2], greedy(), 1.5, "t", 1, 2.0, cache_salt="ns\ntenant")
    back = decode(encode(AddRequest(req))).request
    assert back == req and back.cache_salt == "ns\ntenant"
