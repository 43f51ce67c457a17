"""Constrained decoding through the engine: matchers survive preemption (recompute keeps the
tokens they consumed), async scheduling gives the synchronous engine's tokens, a grammar's
end finishes the sequence, bad constraints are refused, and beam search refuses them."""
from __future__ import annotations

import json

import jsonschema
import pytest

from cormorant import LLM, SamplingParams
from cormorant.sampling_params import StructuredOutputs

SCHEMA = {"type": "object", "properties": {
    "id": {"type": "integer", "minimum": 0, "maximum": 999},
    "words": {"type": "array", "items": {"type": "string", "pattern": "^[a-z]{1,5}$"},
              "minItems": 2, "maxItems": 4},
    "ok": {"type": "boolean"}}, "required": ["id", "words", "ok"],
    "additionalProperties": False}
SPEC = StructuredOutputs(json=json.dumps(SCHEMA))
PROMPTS = [[(i * 13 + j) % 400 + 3 for j in range(20 + 9 * i)] for i in range(6)]


def _params(i: int) -> SamplingParams:
    if i % 2:
        return SamplingParams(temperature=0.0, max_tokens=200, structured_outputs=SPEC)
    return SamplingParams(temperature=1.0, seed=i, max_tokens=200, structured_outputs=SPEC)


def _run(llm: LLM) -> list[list[int]]:
    outs = llm.generate(PROMPTS, [_params(i) for i in range(len(PROMPTS))])
    for out in outs:
        assert out.outputs[0].finish_reason == "stop"
        jsonschema.validate(json.loads(out.outputs[0].text), SCHEMA)
    assert llm.engine.structured.num_active == 0  # every matcher released
    return [out.outputs[0].token_ids for out in outs]


@pytest.fixture(scope="module")
def roomy(tiny_llama):
    return LLM(tiny_llama, block_size=8, num_kv_blocks=256, max_model_len=512)


def test_preemption_and_async_scheduling_keep_the_tokens(tiny_llama, roomy):
    expected = _run(roomy)
    tight = LLM(tiny_llama, block_size=8, num_kv_blocks=24, max_model_len=512)
    assert _run(tight) == expected
    assert tight.engine.stats().num_preemptions > 0
    del tight
    asynchronous = LLM(tiny_llama, block_size=8, num_kv_blocks=24, max_model_len=512,
                       async_scheduling=True)
    runner, deferred = asynchronous.engine.runner, []
    launch = runner.launch
    runner.launch = lambda batch, **kw: deferred.append(kw.get("defer_sampling")) or launch(
        batch, **kw)
    assert _run(asynchronous) == expected
    # Decode steps launched their forward before the masks existed (overlap).
    assert deferred.count(True) > len(deferred) // 2


@pytest.mark.parametrize("engine", ["llguidance", "xgrammar"])
def test_masks_filled_a_chunk_at_a_time_give_the_same_tokens(tiny_llama, monkeypatch, engine):
    """Async steps advance the matchers and fill the next masks in chunks of rows (here 2 of
    the 6), overlapped, where the grammar engine fills on its own threads (llguidance);
    xgrammar's rows advance in the step loop, and one fill of every row runs in the mask
    worker, one job a step. The tokens are those of one fill per step either way."""
    import sys
    import threading

    from cormorant.engine import structured

    synchronous = LLM(tiny_llama, block_size=8, num_kv_blocks=256, max_model_len=512)
    synchronous.engine.structured.backend.json_engine = engine
    assert synchronous.engine.structured.backend.prepare(SPEC, 60) == (engine == "xgrammar")
    expected = _run(synchronous)
    del synchronous
    monkeypatch.setattr(structured, "MASK_CHUNK", 2)
    chunked = LLM(tiny_llama, block_size=8, num_kv_blocks=256, max_model_len=512,
                  async_scheduling=True)
    chunked.engine.structured.backend.json_engine = engine
    chunked.engine.structured.backend.prepare(SPEC, 60)
    fills, threads = [], set()
    fill = chunked.engine.structured._fill
    chunked.engine.structured._fill = lambda matchers: (
        fills.append(len(matchers)), threads.add(threading.current_thread().name),
        fill(matchers))[-1]
    interval = sys.getswitchinterval()
    assert _run(chunked) == expected
    assert sys.getswitchinterval() == interval  # the worker's GIL handover is undone
    assert any(name.startswith("grammar-masks") for name in threads)
    # the first step (prefill, nothing in flight) fills its 6 rows at once
    assert fills[0] == 6
    if engine == "llguidance":  # then chunks of 2
        assert fills.count(2) > len(fills) // 2 and len(fills) > chunked.engine.steps
    else:  # one fill of every constrained row a step
        assert len(fills) <= chunked.engine.steps and fills[1] == 6


@pytest.mark.parametrize("mode,process", [("split", True), ("split", False), ("job", False)])
def test_xgrammar_end_found_in_the_worker_finishes_a_step_late(tiny_llama, monkeypatch, mode,
                                                               process):
    """With ignore_eos, an xgrammar JSON matcher ends on accepting the stop token. Where the
    mask worker advances the matchers (async steps with a grammar process, or the "job"
    mode), it learns that: the engine finishes the sequence at the next collect. In the
    "split" mode without a grammar process the step loop advances, so it knows at once.
    Either way: the same tokens and finish reason as the synchronous engine."""
    from cormorant.engine import structured

    monkeypatch.setattr(structured, "FILL_MODE", mode)
    monkeypatch.setenv("CORMORANT_GRAMMAR_PROCESS", "1" if process else "0")
    params = [SamplingParams(temperature=0.0 if i % 2 else 1.0, seed=i, max_tokens=200,
                             ignore_eos=True, structured_outputs=SPEC) for i in range(4)]
    results = []
    for async_scheduling in (False, True):
        llm = LLM(tiny_llama, block_size=8, num_kv_blocks=256, max_model_len=512,
                  async_scheduling=async_scheduling)
        llm.engine.structured.backend.json_engine = "xgrammar"
        assert llm.engine.structured.backend.prepare(SPEC, 60)
        late, finish_late = [], llm.engine._finish_grammar_ended

        def counted(finish_late=finish_late, late=late):
            outputs = finish_late()
            late.extend(outputs)
            return outputs
        llm.engine._finish_grammar_ended = counted
        outs = [out.outputs[0] for out in llm.generate(PROMPTS[:4], params)]
        # every sequence ended in the worker and was finished late
        in_worker = mode == "job" or process
        assert llm.engine.structured.backend.process_alive == process
        assert len(late) == (4 if async_scheduling and in_worker else 0)
        for out in outs:
            assert out.finish_reason == "stop" and out.token_ids[-1] in llm.engine.eos_token_ids
            jsonschema.validate(json.loads(out.text), SCHEMA)
        assert llm.engine.structured.num_active == 0 and not llm.engine.requests
        results.append([out.token_ids for out in outs])
        del llm
    assert results[0] == results[1]


def test_grammar_end_finishes_without_eos(roomy):
    out = roomy.generate([PROMPTS[0]], SamplingParams(
        temperature=0.0, max_tokens=50, ignore_eos=True,
        structured_outputs=StructuredOutputs(choice=["alpha", "beta"])))[0].outputs[0]
    assert out.text in ("alpha", "beta") and out.finish_reason == "stop"


def test_bad_constraint_is_an_error_and_beam_search_refuses(roomy):
    bad = SamplingParams(max_tokens=5, structured_outputs=StructuredOutputs(regex="(" * 10))
    with pytest.raises(Exception, match="invalid regex"):
        roomy.generate([PROMPTS[0]], bad)
    with pytest.raises(ValueError, match="beam search does not support structured_outputs"):
        roomy.beam_search([PROMPTS[0]], SamplingParams(
            beam_width=2, max_tokens=4, structured_outputs=StructuredOutputs(regex="a+")))
    # The engine goes on serving.
    assert roomy.generate([PROMPTS[0]], SamplingParams(max_tokens=3, temperature=0))
