"""LLM: the offline Python API. `LLM(model).generate(prompts, params)` and `LLM.chat(...)`.

Runs the engine core synchronously in the caller's thread. The core is exposed as
`llm.engine` (add_request / abort_request / step) for callers that drive steps themselves.
`LLM.from_config(engine_config)` builds the same API from a whole EngineConfig.
"""
from __future__ import annotations

import itertools
from collections.abc import Sequence as Seq

from cormorant.config import EngineConfig
from cormorant.engine.types import EngineRequest
from cormorant.engine_args import engine_config_from
from cormorant.frontend.builder import BuiltEngine, build_engine
from cormorant.frontend.default_model import default_model_path
from cormorant.frontend.output_processor import RequestState
from cormorant.frontend.outputs import RequestOutput
from cormorant.sampling_params import SamplingParams
from cormorant.text.grammar import validate as validate_constraint
from cormorant.text.normalize import normalize_messages, normalize_text
from cormorant.text.tool_prompt import template_inputs

Prompt = str | list[int]


class LLM:
    def __init__(self, model: str | None = None, **engine_args):
        """engine_args: any `llm` argument of cormorant.engine_args (dtype, device, seed,
        num_kv_blocks, max_num_seqs, ...); an unknown keyword is a TypeError naming the valid
        ones, a value of the wrong kind a ValueError."""
        config = engine_config_from(engine_args, "llm", model=model or default_model_path())
        self._attach(build_engine(config))

    @classmethod
    def from_config(cls, config: EngineConfig) -> LLM:
        """An LLM over the engine `config` describes, every field honoured (load_format
        "random" included): the path for callers that hold an EngineConfig already."""
        llm = cls.__new__(cls)
        llm._attach(build_engine(config))
        return llm

    def _attach(self, built: BuiltEngine) -> None:
        self.config = built.config
        self.engine = built.core
        self.tokenizer = built.tokenizer
        self.model_config = built.model_config
        self._built = built
        self._ids = itertools.count()

    def close(self) -> None:
        """Stop the engine's worker processes (tensor parallelism); without any, a no-op.
        Workers also stop when this process exits."""
        self._built.close()

    def __enter__(self) -> LLM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def max_model_len(self) -> int:
        return self.config.scheduler.max_model_len

    # -- prompts ----------------------------------------------------------------------------
    def encode(self, prompt: Prompt) -> list[int]:
        if isinstance(prompt, str):
            text = normalize_text(prompt, nfc=self.config.normalize_nfc,
                                  strip_control=self.config.strip_control_chars)
            return self.tokenizer.encode(text)
        return list(prompt)

    # -- generation -------------------------------------------------------------------------
    def generate(self, prompts: Prompt | Seq[Prompt],
                 sampling_params: SamplingParams | Seq[SamplingParams] | None = None,
                 cache_salt: str = "") -> list[RequestOutput]:
        """Complete every prompt (a string or a list of token ids); outputs in prompt order.
        cache_salt: the prefix-cache namespace (only equal salts share cached blocks)."""
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
            prompts = [prompts]  # type: ignore[list-item]
        params = _per_prompt(sampling_params, len(prompts))
        # Only the final outputs are read: text is decoded once per sample (no stop strings).
        states = [self._add(self.encode(p), sp, p if isinstance(p, str) else None,
                            incremental=False, cache_salt=cache_salt)
                  for p, sp in zip(prompts, params)]
        self._run(states)
        return [s.snapshot() for s in states]

    def chat(self, messages: list[dict] | list[list[dict]],
             sampling_params: SamplingParams | Seq[SamplingParams] | None = None,
             add_generation_prompt: bool = True, *, tools: list[dict] | None = None,
             chat_template_kwargs: dict | None = None) -> list[RequestOutput]:
        """Apply the model's chat template to one conversation or a list of them. tools
        (OpenAI function tools) and tool turns are rendered as the server renders them
        (text.tool_prompt); the output text is returned unparsed."""
        conversations = [messages] if messages and isinstance(messages[0], dict) else messages
        flags = dict(nfc=self.config.normalize_nfc, strip_control=self.config.strip_control_chars)
        prompts = []
        for conversation in conversations:
            entries, kwargs = template_inputs(normalize_messages(conversation, **flags), tools,
                                              self.tokenizer.chat_template, chat_template_kwargs)
            prompts.append(self.tokenizer.apply_chat_template(entries, add_generation_prompt,
                                                              **kwargs))
        return self.generate(prompts, sampling_params)

    def stream(self, prompt: Prompt, sampling_params: SamplingParams | None = None):
        """Yield a RequestOutput (with text_delta) after every step for one prompt."""
        state = self._add(self.encode(prompt), sampling_params or SamplingParams(),
                          prompt if isinstance(prompt, str) else None)
        try:
            while not state.finished:
                for eo in self.engine.step():
                    if eo.req_id == state.req_id and state.update(eo):
                        self.engine.stop_sequence(eo.req_id, eo.index)
                yield state.snapshot()
        finally:
            if not state.finished:
                self.engine.abort_request(state.req_id)

    def beam_search(self, prompts: Prompt | Seq[Prompt], params: SamplingParams):
        from cormorant.frontend.beam_search import beam_search

        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
            prompts = [prompts]  # type: ignore[list-item]
        return [beam_search(self, self.encode(p), params) for p in prompts]

    # -- the loop ---------------------------------------------------------------------------
    def _add(self, prompt_ids: list[int], params: SamplingParams,
             prompt: str | None, incremental: bool = True, cache_salt: str = ""
             ) -> RequestState:
        if not prompt_ids:
            raise ValueError("the prompt is empty")
        params.validate(self.model_config.vocab_size)
        if params.structured_outputs is not None:
            validate_constraint(params.structured_outputs)  # GrammarError: a ValueError
        if params.max_tokens is None:
            params = _with_max_tokens(params, self.max_model_len - len(prompt_ids))
        req_id = str(next(self._ids))
        state = RequestState(req_id, prompt_ids, params, self.tokenizer, prompt,
                             incremental=incremental)
        request = EngineRequest(req_id, prompt_ids, params, cache_salt=cache_salt)
        for eo in self.engine.add_request(request):
            state.update(eo)
        return state

    def _run(self, states: list[RequestState]) -> None:
        by_id = {s.req_id: s for s in states if not s.finished}
        while by_id:
            for eo in self.engine.step():
                state = by_id.get(eo.req_id)
                if state is None:
                    continue
                if state.update(eo):
                    self.engine.stop_sequence(eo.req_id, eo.index)
                if state.finished:
                    del by_id[eo.req_id]
            if not self.engine.has_unfinished_requests():
                for state in by_id.values():  # defensive: never spin on a lost request
                    state.abort()
                break


def _per_prompt(params: SamplingParams | Seq[SamplingParams] | None,
                n: int) -> list[SamplingParams]:
    if params is None:
        return [SamplingParams() for _ in range(n)]
    if isinstance(params, SamplingParams):
        return [params] * n
    if len(params) != n:
        raise ValueError(f"got {len(params)} sampling params for {n} prompts")
    return list(params)


def _with_max_tokens(params: SamplingParams, max_tokens: int) -> SamplingParams:
    import dataclasses

    return dataclasses.replace(params, max_tokens=max(1, max_tokens))
