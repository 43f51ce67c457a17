"""Beam search on top of plain engine steps (as vLLM's LLM.beam_search does).

Each round asks the engine for one greedy token per live beam with 2 * width alternatives;
the prefix cache makes the shared history nearly free. Finished beams are ranked by
cumulative logprob / generated_length ** length_penalty. With early stopping (HF's
early_stopping=True): the search ends once `width` beams have finished.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from cormorant.sampling_params import SamplingParams

if TYPE_CHECKING:
    from cormorant.frontend.llm import LLM


@dataclass
class Beam:
    token_ids: list[int]  # generated tokens only
    cumulative_logprob: float = 0.0
    finished: bool = False
    text: str = ""
    score: float = field(default=0.0)


def _score(beam: Beam, length_penalty: float) -> float:
    return beam.cumulative_logprob / max(1, len(beam.token_ids)) ** length_penalty


def beam_search(llm: "LLM", prompt_ids: list[int], params: SamplingParams) -> list[Beam]:
    """Return the best `params.beam_width` beams, best first. A constraint is refused: each
    round re-sends a beam's tokens as its prompt, where no grammar matcher would follow them."""
    if params.structured_outputs is not None:
        raise ValueError("beam search does not support structured_outputs (a constraint); "
                         "use sampling or greedy decoding")
    width = params.beam_width
    max_tokens = params.max_tokens or llm.max_model_len - len(prompt_ids)
    step_params = dataclasses.replace(
        params, n=1, temperature=0.0, max_tokens=1, logprobs=2 * width, use_beam_search=False,
        stop=[], min_tokens=0, seed=None)
    eos = set(llm.engine.eos_token_ids) | set(params.stop_token_ids)
    live = [Beam([])]
    done: list[Beam] = []
    for _ in range(max_tokens):
        outs = llm.generate([prompt_ids + b.token_ids for b in live], step_params)
        candidates = []
        for beam, out in zip(live, outs):
            (entry,) = out.outputs[0].logprobs or []
            for token_id, logprob in entry.top.items():
                candidates.append(Beam(beam.token_ids + [token_id],
                                       beam.cumulative_logprob + logprob))
        candidates.sort(key=lambda b: b.cumulative_logprob, reverse=True)
        live = []
        for cand in candidates[:width]:
            ends = not params.ignore_eos and cand.token_ids[-1] in eos
            ends = ends and len(cand.token_ids) > params.min_tokens
            (done if ends else live).append(cand)
            cand.finished = ends
        if not live or len(done) >= width:
            break
    done.extend(live)
    for beam in done:
        beam.score = _score(beam, params.length_penalty)
        beam.text = llm.tokenizer.decode(beam.token_ids, params.skip_special_tokens)
    done.sort(key=lambda b: b.score, reverse=True)
    return done[:width]
