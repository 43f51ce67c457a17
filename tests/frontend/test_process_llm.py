"""ProcessLLM: the engine core in a child process (msgpack over a pipe) answers exactly as the
in-process AsyncLLM does; aborts free blocks; a dead engine process ends open streams with
EngineDeadError and shows in stats(); a model that cannot load fails the start clearly."""
from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest

from cormorant.config import CacheConfig, EngineConfig, SchedulerConfig
from cormorant.frontend.async_llm import AsyncLLM, EngineDeadError
from cormorant.frontend.engine_process import (EngineSpec, engine_config_from_dict,
                                               engine_config_to_dict, outputs_from_wire,
                                               outputs_to_wire, pack, request_from_wire,
                                               request_to_wire, unpack)
from cormorant.engine.types import EngineOutput, EngineRequest
from cormorant.frontend.process_llm import ProcessLLM
from cormorant.sampling_params import SamplingParams

PROMPTS = [[5, 6, 7, 8], list(range(10, 50)), [3] * 17]


def _config(model: str) -> EngineConfig:
    return EngineConfig(model=model, seed=0, cache=CacheConfig(num_blocks=128),
                        scheduler=SchedulerConfig(max_model_len=256, max_num_seqs=8))


@pytest.fixture(scope="module")
def process_llm(tiny_llama):
    llm = ProcessLLM.from_config(_config(tiny_llama))
    yield llm
    llm.shutdown()


async def _run(llm, prompts, params) -> list[list[int]]:
    async def one(i, ids):
        final = None
        async for out in llm.generate(f"r{i}-{time.monotonic_ns()}", ids, params):
            final = out
        return [list(o.token_ids) for o in final.outputs]

    return await asyncio.gather(*(one(i, p) for i, p in enumerate(prompts)))


def test_the_wire_round_trips():
    params = SamplingParams(temperature=0.5, logit_bias={3: 1.5}, stop=["x"], seed=4, n=2)
    req = EngineRequest("a", [1, 2], params, 12.5, "t", 2, 0.5)
    assert request_from_wire(unpack(pack(request_to_wire(req)))) == req
    out = EngineOutput("a", 1, [7], "stop", [(-0.5, {7: -0.5, 9: -1.0})], [None, (-1.0, {})],
                       4, 2, 7, 3.25, None)
    back = outputs_from_wire(unpack(pack(outputs_to_wire([out]))))[0]
    assert back.new_logprobs[0][1] == {7: -0.5, 9: -1.0} and back.stop_token_id == 7
    assert (back.req_id, back.index, back.new_token_ids, back.finish_reason) == ("a", 1, [7],
                                                                                  "stop")
    config = _config("m")
    assert engine_config_from_dict(unpack(pack(engine_config_to_dict(config)))) == config


def test_same_tokens_as_the_in_process_engine(process_llm, tiny_llama):
    local = AsyncLLM.from_config(_config(tiny_llama))
    try:
        for params in (SamplingParams(max_tokens=12, temperature=0.0),
                       SamplingParams(max_tokens=10, temperature=0.8, seed=3, n=2)):
            assert asyncio.run(_run(process_llm, PROMPTS, params)) == \
                asyncio.run(_run(local, PROMPTS, params))
    finally:
        local.shutdown()
    assert process_llm.max_model_len == 256 and process_llm.memory_bytes > 0
    assert process_llm.model_config.vocab_size == local.model_config.vocab_size


def test_abort_frees_the_blocks(process_llm):
    free = process_llm.stats().num_free_blocks

    async def leave_early():
        gen = process_llm.generate("early", list(range(20, 60)),
                                   SamplingParams(max_tokens=200, ignore_eos=True))
        async for _ in gen:
            break
        await gen.aclose()  # closing the stream aborts the request

    asyncio.run(leave_early())
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (process_llm.stats().num_free_blocks != free
                                           or process_llm.stats().num_running):
        time.sleep(0.05)
    stats = process_llm.stats()
    assert (stats.num_free_blocks, stats.num_running) == (free, 0) and stats.is_loop_alive


def test_a_dead_engine_process_ends_the_streams(tiny_llama):
    llm = ProcessLLM.from_config(_config(tiny_llama))

    async def stream_then_kill():
        gen = llm.generate("doomed", [4, 5, 6], SamplingParams(max_tokens=250,
                                                               ignore_eos=True))
        await gen.__anext__()
        os.kill(llm._proc.process.pid, signal.SIGKILL)
        with pytest.raises(EngineDeadError):
            async for _ in gen:
                pass

    try:
        asyncio.run(asyncio.wait_for(stream_then_kill(), 60))
        assert not llm.stats().is_loop_alive
        with pytest.raises(EngineDeadError):
            asyncio.run(_run(llm, PROMPTS[:1], SamplingParams(max_tokens=2)))
    finally:
        llm.shutdown()


def test_a_model_that_cannot_load_fails_the_start(tmp_path):
    (tmp_path / "config.json").write_text('{"architectures": ["NoSuchForCausalLM"]}')
    spec = EngineSpec("config", {"config": engine_config_to_dict(_config(str(tmp_path)))})
    from cormorant.frontend.engine_process import EngineProcess

    with pytest.raises(RuntimeError, match="failed to start"):
        EngineProcess(spec, lambda message: None, start_timeout_s=120)
