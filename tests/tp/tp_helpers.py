"""Helpers for the tensor-parallel tests: the tiny models they share, greedy runs with
logprobs, and the comparison every TP run must pass against the same model at TP = 1."""
from __future__ import annotations

import math

from cormorant.frontend.llm import LLM
from cormorant.sampling_params import SamplingParams

# Four prompts of different lengths, batched; 32 greedy tokens each, top-2 logprobs.
PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [40, 41, 42], list(range(100, 123)), [300]]
GREEDY = SamplingParams(max_tokens=32, temperature=0.0, logprobs=2, ignore_eos=True)
LOGPROB_TOLERANCE = 1e-5


def run(model: str, prompts=PROMPTS, params=GREEDY, **engine_args):
    """(outputs, engine stats after the run) of an LLM built from engine_args, then closed."""
    with LLM(model, seed=0, **engine_args) as llm:
        outputs = llm.generate(prompts, params)
        return outputs, llm.engine.stats()


def assert_same_generation(reference, outputs) -> None:
    """Token-identical greedy ids; chosen and top-k logprobs within LOGPROB_TOLERANCE."""
    assert len(reference) == len(outputs)
    for ref, out in zip(reference, outputs):
        ref_c, out_c = ref.outputs[0], out.outputs[0]
        assert out_c.token_ids == ref_c.token_ids
        assert len(out_c.logprobs) == len(ref_c.logprobs) == len(ref_c.token_ids)
        for ref_lp, out_lp in zip(ref_c.logprobs, out_c.logprobs):
            assert out_lp.token_id == ref_lp.token_id
            assert abs(out_lp.logprob - ref_lp.logprob) <= LOGPROB_TOLERANCE
            assert set(out_lp.top) == set(ref_lp.top) and len(ref_lp.top) == 2
            for token_id, value in ref_lp.top.items():
                assert math.isfinite(out_lp.top[token_id])
                assert abs(out_lp.top[token_id] - value) <= LOGPROB_TOLERANCE


def is_running(pid: int) -> bool:
    """Whether `pid` is a live process (a zombie, not yet reaped, counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False

