"""The ingress rebuilds exactly what the replica's engine produced: a real tiny engine's
streamed outputs (n=2, logprobs, prompt logprobs, stop strings) crossing as msgpack step
messages come out as the same cumulative text, ids and logprobs, and deltas between takes
add up when the reader is slow."""
from __future__ import annotations

import asyncio

import msgpack

from ray_cluster import engine_config

from cormorant.frontend.async_llm import AsyncLLM
from cormorant.sampling_params import SamplingParams
from cormorant.scaleout.wire import (OutputAssembler, output_message, read_request, read_stats,
                                     request_message)


def _over_the_wire(message: dict) -> dict:
    return msgpack.unpackb(msgpack.packb(message, use_bin_type=True), raw=False)


async def _stream(llm, prompt: list[int], params: SamplingParams):
    return [out async for out in llm.generate("r1", prompt, params)]


def test_step_messages_rebuild_the_engines_outputs(tiny_llama):
    params = SamplingParams(n=2, temperature=0.8, seed=3, max_tokens=12, logprobs=2,
                            prompt_logprobs=1, stop=["e"], ignore_eos=True)
    prompt = [5, 17, 42, 99, 7]
    message = _over_the_wire(request_message("r1", prompt, params, tenant="t", priority=1))
    request_id, ids, got_params, extra = read_request(message)
    assert (request_id, ids, got_params, extra["tenant"]) == ("r1", prompt, params, "t")
    llm = AsyncLLM.from_config(engine_config(tiny_llama))
    try:
        outs = asyncio.run(_stream(llm, prompt, params))
        stats = llm.stats()
    finally:
        llm.shutdown()
    assembler = OutputAssembler("r1", prompt, n=2)
    deltas = ["", ""]
    for i, out in enumerate(outs):
        wire = _over_the_wire(output_message(out, "replica-a", stats, first=i == 0))
        assert read_stats(wire).num_total_blocks == stats.num_total_blocks
        assembler.apply(wire)
        if i % 2:  # a slow reader: every other step's news is taken in one go
            for o in assembler.take().outputs:
                deltas[o.index] += o.text_delta
    final = assembler.take()
    for o in final.outputs:
        deltas[o.index] += o.text_delta
    expected = outs[-1]
    assert final.finished and expected.finished
    assert final.prompt_logprobs == expected.prompt_logprobs
    for got, want in zip(final.outputs, expected.outputs):
        assert got.text == want.text == deltas[got.index]
        assert got.token_ids == want.token_ids
        assert got.logprobs == want.logprobs
        assert (got.finish_reason, got.stop_reason) == (want.finish_reason, want.stop_reason)
        assert got.cumulative_logprob == want.cumulative_logprob
    assert final.num_cached_tokens == expected.num_cached_tokens
