"""POST /v1/completions: request -> engine requests -> a JSON body or an SSE stream.

One engine request per prompt (its n choices live inside it); choice index = prompt index * n
+ choice. Echo prepends the prompt (and, with logprobs, the prompt tokens' logprobs, the first
being null as in OpenAI's API). Imports server modules and frontend.outputs types.
"""
from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response

from cormorant.frontend.outputs import CompletionOutput, RequestOutput
from cormorant.gateway.caching.response_cache import is_deterministic
from cormorant.hosting.served import ServedGenerator
from cormorant.server.body import read_request
from cormorant.server.cached_responses import cache_query, replay, store
from cormorant.server.dispatch import Prepared, Started, respond, start_generation
from cormorant.server.errors import APIError
from cormorant.server.generation import EngineStream, Job
from cormorant.server.logprobs import completion_logprobs
from cormorant.server.params import completion_params, with_drift_logprobs
from cormorant.server.structured import checked_structured_outputs
from cormorant.server.prompts import Prompt, completion_prompts, count_prompts
from cormorant.server.protocol import CompletionRequest
from cormorant.server.responses import (ResponseContext, finals_usage, finish_reason, new_id,
                                        usage)
from cormorant.server.state import ServerState


@dataclass(kw_only=True)
class _Ctx(ResponseContext):
    echo: bool
    logprobs: int | None
    prompts: list[Prompt]
    decode: Callable[..., str]  # tokenizer.decode, to echo prompts sent as token ids

    def echo_text(self, index: int) -> str:
        prompt = self.prompts[index]
        if prompt.text is None:
            prompt.text = self.decode(prompt.token_ids, skip_special_tokens=False)
        return prompt.text

    def body(self, choices: list[dict]) -> dict:
        return self.envelope("text_completion", choices)


async def create_completion(request: Request, state: ServerState) -> Response:
    req = await read_request(request, CompletionRequest, state.validation_context)
    num_prompts = count_prompts(req.prompt)
    if num_prompts * req.n > state.config.max_choices:  # bounded before any tokenization
        raise APIError(400, f"{num_prompts} prompts x n={req.n} exceeds the limit of "
                       f"{state.config.max_choices} choices per request.", param="n",
                       code="invalid_value")
    structured = await checked_structured_outputs(req)

    async def prepare(served: ServedGenerator) -> Prepared:
        prompts = await completion_prompts(req.prompt, served.tokenizer, served.vocab_size,
                                           state.tokenize_pool, served.max_model_len)
        params = [with_drift_logprobs(completion_params(req, len(p.token_ids),
                                                        served.max_model_len, served.vocab_size,
                                                        structured),
                                      state.config.drift_logprobs) for p in prompts]
        request_id = new_id("cmpl")
        jobs = [Job(f"{request_id}-{i}", p.token_ids, sp)
                for i, (p, sp) in enumerate(zip(prompts, params))]
        return Prepared(jobs, [len(p.token_ids) for p in prompts], params, extra=prompts)

    query = cache_query(request, state, req, is_deterministic(req.temperature, req.seed)
                        and req.logprobs is None,
                        lambda: req.prompt if isinstance(req.prompt, str) else None)
    started = await start_generation(request, state, req.model, req.user, "completions",
                                     prepare, query, req.cache_salt)
    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    if started.cached is not None:
        return replay(started.cached, "completions", req.stream, include_usage, started.headers,
                      state.config.max_error_chars)
    served = started.served
    ctx = _Ctx(id=started.prepared.jobs[0].request_id.rsplit("-", 1)[0],
               model=served.model_id, fingerprint=served.fingerprint, n=req.n,
               echo=req.echo, logprobs=req.logprobs, include_usage=include_usage,
               prompts=started.prepared.extra, token_text=served.token_text,
               decode=served.tokenizer.decode)
    return await respond(request, state, started, req.stream,
                         lambda: _chunks(ctx, started.stream, started, state),
                         lambda finals: _response(ctx, finals))


def _ids_and_entries(ctx: _Ctx, index: int, out: RequestOutput, token_ids: list[int],
                     entries: list, with_prompt: bool) -> tuple[list[int], list]:
    if not with_prompt:
        return token_ids, entries
    prompt_ids = ctx.prompts[index].token_ids
    prompt_entries = list(out.prompt_logprobs or [None] * len(prompt_ids))
    return prompt_ids + token_ids, prompt_entries + entries


def _response(ctx: _Ctx, finals: list[RequestOutput]) -> dict:
    choices = []
    for index, out in enumerate(finals):
        for o in sorted(out.outputs, key=lambda o: o.index):
            text = ctx.echo_text(index) + o.text if ctx.echo else o.text
            logprobs = None
            if ctx.logprobs is not None:
                ids, entries = _ids_and_entries(ctx, index, out, list(o.token_ids),
                                                list(o.logprobs or []), ctx.echo)
                logprobs, _ = completion_logprobs(entries, ids, ctx.token_text, ctx.logprobs, 0)
            choices.append({"index": index * ctx.n + o.index, "text": text,
                            "logprobs": logprobs, "finish_reason": finish_reason(o.finish_reason)})
    return {**ctx.body(choices), "usage": finals_usage(finals)}


class _ChoiceState:
    __slots__ = ("started", "finished", "offset", "num_tokens")

    def __init__(self) -> None:
        self.started = False
        self.finished = False
        self.offset = 0  # text_offset of the next token
        self.num_tokens = 0


def _stream_choice(ctx: _Ctx, index: int, out: RequestOutput, o: CompletionOutput,
                   st: _ChoiceState) -> dict | None:
    first = not st.started
    st.started = True
    text = o.text_delta
    new_ids = list(o.token_ids[len(o.token_ids) - o.num_new_tokens:]) if o.num_new_tokens else []
    st.num_tokens = len(o.token_ids)
    reason = finish_reason(o.finish_reason)
    st.finished = reason is not None
    with_prompt = first and ctx.echo
    if with_prompt:
        text = ctx.echo_text(index) + text
    if not text and not new_ids and reason is None:
        return None
    logprobs = None
    if ctx.logprobs is not None:
        entries = list(o.logprobs[len(o.logprobs) - len(new_ids):]) if new_ids and o.logprobs \
            else []
        ids, entries = _ids_and_entries(ctx, index, out, new_ids, entries, with_prompt)
        logprobs, st.offset = completion_logprobs(entries, ids, ctx.token_text, ctx.logprobs,
                                                  st.offset)
    return {"index": index * ctx.n + o.index, "text": text, "logprobs": logprobs,
            "finish_reason": reason}


async def _chunks(ctx: _Ctx, stream: EngineStream, started: Started, state: ServerState
                  ) -> AsyncIterator[list[dict]]:
    states: dict[int, _ChoiceState] = {}
    finals: dict[int, RequestOutput] = {}
    cached: dict[int, int] = {}
    null_usage = {"usage": None} if ctx.include_usage else {}
    async with aclosing(stream.outputs()) as outputs:
        async for index, out in outputs:
            choices = []
            for o in out.outputs:
                st = states.setdefault(index * ctx.n + o.index, _ChoiceState())
                if not st.finished:
                    choice = _stream_choice(ctx, index, out, o, st)
                    if choice is not None:
                        choices.append(choice)
            cached[index] = out.num_cached_tokens
            finals[index] = out
            # One choice per chunk, as OpenAI sends them; one write per engine step.
            yield [{**ctx.body([choice]), **null_usage} for choice in choices]
    if ctx.include_usage:
        completion_tokens = sum(st.num_tokens for st in states.values())
        yield [{**ctx.body([]), "usage": usage([len(p.token_ids) for p in ctx.prompts],
                                               completion_tokens, sum(cached.values()))}]
    if len(finals) == len(ctx.prompts) and started.cache.stores:  # complete: not cut short
        await store(state, started.cache, _response(ctx, [finals[i] for i in sorted(finals)]))
