"""Async scheduling (EngineConfig.async_scheduling): step n+1 is scheduled and launched before
step n's ids are read, and its decode inputs are filled on the device. On the CPU the overlap
buys nothing, but the logic is the same: every output must equal the synchronous engine's,
token for token, and no block may leak."""
from __future__ import annotations

import pytest

from cormorant import LLM, SamplingParams
from cormorant.engine.core import PLACEHOLDER_TOKEN_ID
from cormorant.engine.types import EngineRequest

BLOCK = 8
_llms: dict[tuple, LLM] = {}


@pytest.fixture(scope="module")
def make(tiny_llama):
    def make(async_scheduling: bool, **kw) -> LLM:
        key = (async_scheduling, tuple(sorted(kw.items())))
        if key not in _llms:
            args = dict(block_size=BLOCK, num_kv_blocks=256, max_num_batched_tokens=512)
            args.update(kw)
            _llms[key] = LLM(tiny_llama, async_scheduling=async_scheduling, **args)
        return _llms[key]
    yield make
    _llms.clear()


def run_both(make, prompts, params, **kw):
    """(sync outputs, async outputs) as (token ids, finish reason) per sample; also checks
    that the async engine ends with every block free and nothing in its queues."""
    results = []
    for is_async in (False, True):
        llm = make(is_async, **kw)
        free = llm.engine.block_manager.num_free_blocks
        outs = llm.generate(prompts, params)
        results.append([[(o.token_ids, o.finish_reason) for o in r.outputs] for r in outs])
        assert llm.engine.block_manager.num_free_blocks == free
        assert not llm.engine.scheduler.has_unfinished
    return results


def greedy(n=16, **kw):
    return SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True, **kw)


def prompts(num, base=20, step=7):
    return [[(i * 13 + j) % 400 + 3 for j in range(base + step * i)] for i in range(num)]


def test_greedy_mixed_lengths_match_sync(make):
    params = [greedy(n) for n in (1, 2, 5, 9, 16, 3, 30)]
    sync, asyn = run_both(make, prompts(7), params)
    assert asyn == sync
    assert [len(r[0][0]) for r in asyn] == [1, 2, 5, 9, 16, 3, 30]


def test_stop_token_finishes_match_sync(make):
    ps = prompts(5)
    full = make(False).generate(ps, greedy(20))
    # Stop each prompt at a token of its own greedy output (different steps per prompt).
    params = [SamplingParams(temperature=0.0, max_tokens=20,
                             stop_token_ids=[o.outputs[0].token_ids[i + 1]])
              for i, o in enumerate(full)]
    sync, asyn = run_both(make, ps, params)
    assert asyn == sync
    assert all(r[0][1] == "stop" for r in asyn)


def test_preemption_with_a_small_cache_matches_sync(make):
    ps = [[(i * 13 + j) % 400 + 3 for j in range(20 + 5 * i)] for i in range(6)]
    sync, asyn = run_both(make, ps, greedy(40), num_kv_blocks=24)
    assert asyn == sync
    assert make(True, num_kv_blocks=24).engine.stats().num_preemptions > 0


def test_chunked_prefill_matches_sync(make):
    ps = [[(i * 31 + k) % 450 + 3 for i in range(300 + 40 * k)] for k in range(3)]
    ps += prompts(3)
    params = [greedy(n) for n in (8, 12, 3, 20, 1, 9)]
    sync, asyn = run_both(make, ps, params, max_num_batched_tokens=64)
    assert asyn == sync


def test_n_greater_than_1_matches_sync(make):
    params = [SamplingParams(n=3, temperature=1.0, max_tokens=n, seed=7 + n, ignore_eos=True)
              for n in (4, 9)]
    sync, asyn = run_both(make, [list(range(3, 3 + 3 * BLOCK)), list(range(50, 70))], params)
    assert asyn == sync
    assert len({tuple(t) for t, _ in asyn[0]}) > 1


def test_seeded_sampling_is_reproducible(make):
    ps = prompts(4)
    params = [SamplingParams(temperature=0.9, top_p=0.95, max_tokens=n, seed=100 + n,
                             ignore_eos=True) for n in (3, 11, 6, 17)]
    sync, asyn = run_both(make, ps, params)
    assert asyn == sync
    again = make(True).generate(ps, params)
    assert [[(o.token_ids, o.finish_reason) for o in r.outputs] for r in again] == asyn


def test_penalties_logprobs_and_min_tokens_match_sync(make):
    ps = prompts(4)
    params = [SamplingParams(temperature=0.0, max_tokens=12, repetition_penalty=1.3,
                             frequency_penalty=0.5, ignore_eos=True),
              greedy(10, logprobs=3),
              SamplingParams(temperature=0.0, max_tokens=7, ignore_eos=True, prompt_logprobs=2),
              SamplingParams(temperature=0.0, max_tokens=9, min_tokens=4,
                             stop_token_ids=[5, 6, 7])]
    results = []
    for is_async in (False, True):
        outs = make(is_async).generate(ps, params)
        results.append([(r.prompt_logprobs, [(o.token_ids, o.logprobs, o.finish_reason)
                                             for o in r.outputs]) for r in outs])
    assert results[1] == results[0]


def test_decode_graph_path_fills_inputs_on_the_device(make, tiny_llama):
    """The padded decode-graph path (run eagerly here) patches its static input_ids."""
    expected = run_both(make, prompts(6), [greedy(n) for n in (4, 9, 1, 14, 6, 11)])[0]
    llm = LLM(tiny_llama, block_size=BLOCK, num_kv_blocks=256, async_scheduling=True)
    runner = llm.engine.runner
    runner.graphs = runner.new_decode_graphs()
    runner.graphs.use_eager()
    outs = llm.generate(prompts(6), [greedy(n) for n in (4, 9, 1, 14, 6, 11)])
    assert [[(o.token_ids, o.finish_reason) for o in r.outputs] for r in outs] == expected


def test_step_n_plus_1_launches_before_step_n_is_collected(make):
    llm = make(True, max_num_seqs=4)  # a fresh engine: nothing in flight from other tests
    runner, calls = llm.engine.runner, []
    launch, collect = runner.launch, runner.collect
    runner.launch = lambda batch: calls.append("launch") or launch(batch)
    runner.collect = lambda handle: calls.append("collect") or collect(handle)
    try:
        llm.generate([[5, 6, 7]], greedy(3))
    finally:
        del runner.launch, runner.collect
    # Prefill, two decodes and the one discarded decode of the finished sequence.
    assert calls == ["launch", "launch", "collect", "launch", "collect", "launch", "collect"]


def test_abort_mid_run_frees_every_block(make):
    engine = make(True).engine
    free = engine.block_manager.num_free_blocks
    for k in range(3):
        engine.add_request(EngineRequest(f"abort-{k}", list(range(3 + k, 40 + 9 * k)),
                                         greedy(100)))
    got = {}
    for _ in range(6):
        for out in engine.step():
            got.setdefault(out.req_id, []).extend(out.new_token_ids)
        engine.scheduler.check_invariants()
    assert engine.block_manager.num_free_blocks < free
    engine.abort_request("abort-1")
    engine.step()
    engine.scheduler.check_invariants()
    engine.abort_request("abort-0")
    engine.abort_request("abort-2")
    assert engine.block_manager.num_free_blocks == free
    assert not engine.has_unfinished_requests()
    assert engine.step() == []  # the in-flight step of aborted sequences is discarded
    assert engine.step() == []
    assert engine.block_manager.num_free_blocks == free
    assert all(PLACEHOLDER_TOKEN_ID not in ids for ids in got.values())
    assert all(len(ids) == 5 for ids in got.values())  # six steps, one in flight


def test_stop_strings_match_sync(make):
    ps = prompts(3)
    full = make(False).generate(ps, greedy(24))
    params = [greedy(24, stop=[o.outputs[0].text[4 + 3 * i:7 + 3 * i]])
              for i, o in enumerate(full)]
    results = []
    for is_async in (False, True):
        llm = make(is_async)
        free = llm.engine.block_manager.num_free_blocks
        outs = llm.generate(ps, params)
        assert llm.engine.block_manager.num_free_blocks == free
        results.append([(o.outputs[0].text, o.outputs[0].token_ids, o.outputs[0].finish_reason)
                        for o in outs])
    assert results[1] == results[0]
    assert all(reason == "stop" for _, _, reason in results[1])
