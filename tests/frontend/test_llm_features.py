"""Paged-cache behaviour seen from the public API: prefix caching, preemption, chunked
prefill, abort, and the per-request sampling options."""
from __future__ import annotations

import pytest

import tiny
from cormorant import LLM, SamplingParams
from cormorant.engine.types import EngineRequest

BLOCK = 8


@pytest.fixture(scope="module")
def llm(tiny_llama):
    return LLM(tiny_llama, block_size=BLOCK, num_kv_blocks=256, max_num_batched_tokens=512)


@pytest.fixture(scope="module")
def ref(tiny_llama):
    return tiny.load_reference(tiny_llama)


def greedy(n=16, **kw):
    return SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True, **kw)


def test_prefix_cache_computes_only_the_remainder(llm):
    shared = [(i * 7) % 400 + 3 for i in range(2 * BLOCK)]
    first = llm.generate([shared + [41, 42, 43]], greedy())[0]
    second = llm.generate([shared + [51, 52]], greedy())[0]
    assert first.num_cached_tokens == 0
    assert second.num_cached_tokens == 2 * BLOCK
    fresh = LLM(llm.config.model, block_size=BLOCK, num_kv_blocks=64,
                enable_prefix_caching=False)
    assert second.outputs[0].token_ids == fresh.generate(
        [shared + [51, 52]], greedy())[0].outputs[0].token_ids


def test_preemption_keeps_greedy_output(tiny_llama, llm):
    prompts = [[(i * 13 + j) % 400 + 3 for j in range(20 + 5 * i)] for i in range(6)]
    expected = [o.outputs[0].token_ids for o in llm.generate(prompts, greedy(40))]
    small = LLM(tiny_llama, block_size=BLOCK, num_kv_blocks=24, max_num_batched_tokens=512)
    got = [o.outputs[0].token_ids for o in small.generate(prompts, greedy(40))]
    assert got == expected
    assert small.engine.stats().num_preemptions > 0
    assert small.engine.block_manager.num_free_blocks == 24


def test_chunked_prefill_matches_unchunked(tiny_llama, llm):
    prompt = [(i * 31) % 450 + 3 for i in range(1000)]
    chunked = LLM(tiny_llama, block_size=BLOCK, num_kv_blocks=256, max_num_batched_tokens=64)
    expected = llm.generate([prompt], greedy(8))[0].outputs[0].token_ids
    assert chunked.generate([prompt], greedy(8))[0].outputs[0].token_ids == expected


def test_abort_frees_blocks_in_the_same_step(llm):
    engine = llm.engine
    free_before = engine.block_manager.num_free_blocks
    engine.add_request(EngineRequest("abort-me", list(range(3, 40)), greedy(100)))
    engine.step()
    assert engine.block_manager.num_free_blocks < free_before
    engine.abort_request("abort-me")
    assert engine.block_manager.num_free_blocks == free_before
    assert not engine.has_unfinished_requests()
    assert engine.step() == []


def test_prompt_that_never_fits_is_rejected(tiny_llama):
    small = LLM(tiny_llama, block_size=BLOCK, num_kv_blocks=4, max_model_len=2048)
    out = small.generate([list(range(3, 100))], greedy(4))[0]
    assert out.error and out.finished


def test_seed_reproducible_whatever_the_batch(llm):
    seeded = SamplingParams(temperature=1.0, max_tokens=12, seed=1234, ignore_eos=True)
    noise = SamplingParams(temperature=1.0, max_tokens=20, ignore_eos=True)
    alone = llm.generate([[5, 6, 7, 8]], seeded)[0].outputs[0].token_ids
    batch = llm.generate([[9, 10], [5, 6, 7, 8], [300, 301, 302]], [noise, seeded, noise])
    assert batch[1].outputs[0].token_ids == alone
    other = SamplingParams(temperature=1.0, max_tokens=12, seed=99, ignore_eos=True)
    assert llm.generate([[5, 6, 7, 8]], other)[0].outputs[0].token_ids != alone


def test_top_k_1_equals_greedy(llm):
    prompt = [17, 18, 19, 20, 21]
    top1 = SamplingParams(temperature=0.8, top_k=1, max_tokens=16, ignore_eos=True, seed=3)
    assert (llm.generate([prompt], top1)[0].outputs[0].token_ids
            == llm.generate([prompt], greedy())[0].outputs[0].token_ids)


def test_stop_string_spanning_tokens_is_cut_exactly(llm):
    prompt = [40, 41, 42, 43]
    full = llm.generate([prompt], greedy(24))[0].outputs[0]
    text = full.text
    # A stop string made of the end of one token and the start of later ones.
    pieces = [llm.tokenizer.decode([t]) for t in full.token_ids]
    start = len(pieces[0]) + len(pieces[1]) - 1
    stop = text[start:start + 4]
    assert len(stop) == 4 and text.find(stop) == start
    cut = llm.generate([prompt], greedy(24, stop=[stop]))[0].outputs[0]
    assert cut.text == text[:start]
    assert cut.finish_reason == "stop" and cut.stop_reason == stop
    kept = llm.generate([prompt], greedy(24, stop=[stop], include_stop_str_in_output=True))
    assert kept[0].outputs[0].text == text[:start + 4]


def test_min_tokens_holds_eos_back(llm):
    prompt = [60, 61, 62]
    first = llm.generate([prompt], greedy(1))[0].outputs[0].token_ids[0]
    # Make the model's first greedy token the EOS: it stops at once without min_tokens.
    params = dict(temperature=0.0, max_tokens=10, stop_token_ids=[first])
    assert len(llm.generate([prompt], SamplingParams(**params))[0].outputs[0].token_ids) == 1
    held = llm.generate([prompt], SamplingParams(min_tokens=5, **params))[0].outputs[0]
    assert len(held.token_ids) >= 5 and first not in held.token_ids[:5]


def test_n_returns_n_completions_sharing_the_prompt(llm):
    params = SamplingParams(n=3, temperature=1.0, max_tokens=8, seed=7, ignore_eos=True)
    out = llm.generate([list(range(3, 3 + 3 * BLOCK))], params)[0]
    assert [o.index for o in out.outputs] == [0, 1, 2]
    assert all(len(o.token_ids) == 8 for o in out.outputs)
    assert len({tuple(o.token_ids) for o in out.outputs}) > 1


def test_beam_width_1_equals_greedy(llm):
    prompt = [70, 71, 72, 73]
    beams = llm.beam_search([prompt], SamplingParams(beam_width=1, max_tokens=10,
                                                     ignore_eos=True))[0]
    assert beams[0].token_ids == llm.generate([prompt], greedy(10))[0].outputs[0].token_ids


def test_beam_search_returns_best_beams_in_order(llm):
    params = SamplingParams(beam_width=3, max_tokens=6, ignore_eos=True, length_penalty=1.0)
    beams = llm.beam_search([[80, 81, 82]], params)[0]
    assert len(beams) == 3
    scores = [b.score for b in beams]
    assert scores == sorted(scores, reverse=True)
    greedy_ids = llm.generate([[80, 81, 82]], greedy(6, logprobs=0))[0].outputs[0]
    greedy_logprob = sum(lp.logprob for lp in greedy_ids.logprobs)
    assert beams[0].cumulative_logprob >= greedy_logprob - 1e-5


def test_offline_generate_decodes_once_with_the_same_text_as_streaming(tiny_llama):
    """LLM.generate decodes each sample's text once at the end (no stop strings); the text
    equals what the incremental, streamed path builds token by token, on random tiny-model
    output full of partial UTF-8 byte tokens; with stop strings it stays incremental."""
    from cormorant import LLM
    from cormorant.sampling_params import SamplingParams

    llm = LLM(tiny_llama, num_kv_blocks=256)
    prompts = ["Café crème brûlée", "中文字符", "Emoji: 🦜", "def add(a, b):"]
    for seed in range(3):
        params = SamplingParams(max_tokens=40, temperature=1.0, seed=seed, ignore_eos=True)
        offline = [o.outputs[0] for o in llm.generate(prompts, params)]
        for prompt, out in zip(prompts, offline):
            streamed = "".join(o.outputs[0].text_delta for o in llm.stream(prompt, params))
            assert out.text == streamed and out.finish_reason == "length"
            assert out.text == llm.tokenizer.decode(out.token_ids) or "\ufffd" in out.text
    stopped = llm.generate(prompts[0], SamplingParams(max_tokens=40, temperature=0.0,
                                                      stop=[" "]))[0].outputs[0]
    assert " " not in stopped.text
