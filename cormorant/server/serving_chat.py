"""POST /v1/chat/completions: messages -> chat template -> one engine request (n choices).

Streaming follows OpenAI's shape exactly: per choice, a first chunk with the assistant role,
then content deltas (and reasoning_content / tool_calls deltas: server.chat_output), then a
chunk with an empty delta and the finish reason; with stream_options.include_usage, a last
chunk with no choices and the usage. Tools and reasoning are planned in server.chat_tools.
Imports server modules and frontend.outputs types.
"""
from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass, field

from starlette.requests import Request
from starlette.responses import Response

from cormorant.frontend.outputs import CompletionOutput, RequestOutput
from cormorant.gateway.caching.response_cache import is_deterministic
from cormorant.hosting.served import ServedGenerator
from cormorant.sampling_params import StructuredOutputs
from cormorant.server.body import read_request
from cormorant.server.cached_responses import cache_query, replay, store
from cormorant.server.chat_output import ChoiceDeltas, final_message, tool_finish_reason
from cormorant.server.chat_tools import (ChatPlan, chat_plan, check_tool_constraint, constrain,
                                         prompt_opens_thinking)
from cormorant.server.dispatch import Prepared, Started, respond, start_generation
from cormorant.server.generation import EngineStream, Job
from cormorant.server.logprobs import chat_logprobs
from cormorant.server.params import chat_params, chat_top_logprobs, with_drift_logprobs
from cormorant.server.structured import checked_structured_outputs
from cormorant.server.prompts import chat_prompt
from cormorant.server.protocol import ChatCompletionRequest
from cormorant.server.responses import (ResponseContext, finals_usage, finish_reason, new_id,
                                        usage)
from cormorant.server.state import ServerState


@dataclass(kw_only=True)
class _Ctx(ResponseContext):
    top_logprobs: int | None  # None: no logprobs
    prompt_len: int
    plan: ChatPlan = field(default_factory=ChatPlan)
    opened: bool = False  # the prompt opened a think block

    def chunk(self, choices: list[dict]) -> dict:
        body = self.envelope("chat.completion.chunk", choices)
        if self.include_usage:
            body["usage"] = None
        return body


def chat_preparer(req: ChatCompletionRequest, state: ServerState,
                  structured: StructuredOutputs | None, id_prefix: str = "chatcmpl"
                  ) -> Callable[[ServedGenerator], Awaitable[Prepared]]:
    """The request as one engine job on a given model; extra: (ChatPlan, prompt opened a
    think block). Shared with the Responses API (server.serving_responses)."""
    async def prepare(served: ServedGenerator) -> Prepared:
        tokenizer = served.tokenizer
        plan = chat_plan(req.tools, req.tool_choice, req.parallel_tool_calls,
                         req.chat_template_kwargs, getattr(tokenizer, "chat_template", None),
                         state.config.reasoning_parser)
        prompt = await chat_prompt(req.messages, tokenizer, state.tokenize_pool,
                                   max_model_len=served.max_model_len, inputs=plan.inputs)
        params = with_drift_logprobs(chat_params(req, len(prompt.token_ids),
                                                 served.max_model_len, served.vocab_size,
                                                 structured), state.config.drift_logprobs)
        constrain(params, plan)
        opened = plan.reasoning and prompt_opens_thinking(prompt.token_ids, tokenizer.decode)
        return Prepared([Job(new_id(id_prefix), prompt.token_ids, params)],
                        [len(prompt.token_ids)], [params], extra=(plan, opened))
    return prepare


async def create_chat_completion(request: Request, state: ServerState) -> Response:
    req = await read_request(request, ChatCompletionRequest, state.validation_context)
    await check_tool_constraint(req.tools, req.tool_choice, req.parallel_tool_calls)
    prepare = chat_preparer(req, state, await checked_structured_outputs(req))
    query = cache_query(request, state, req, is_deterministic(req.temperature, req.seed)
                        and not req.logprobs, lambda: _messages_text(req))
    started = await start_generation(request, state, req.model, req.user, "chat", prepare,
                                     query, req.cache_salt)
    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    if started.cached is not None:
        return replay(started.cached, "chat", req.stream, include_usage, started.headers,
                      state.config.max_error_chars)
    served, job = started.served, started.prepared.jobs[0]
    plan, opened = started.prepared.extra
    ctx = _Ctx(id=job.request_id, model=served.model_id, fingerprint=served.fingerprint,
               n=req.n, top_logprobs=chat_top_logprobs(req), include_usage=include_usage,
               prompt_len=len(job.prompt_token_ids), token_text=served.token_text,
               plan=plan, opened=opened)
    return await respond(request, state, started, req.stream,
                         lambda: _chunks(ctx, started.stream, started, state),
                         lambda finals: _response(ctx, finals[0]))


def _messages_text(req: ChatCompletionRequest) -> str:
    """The conversation as one text, for the semantic cache's embedding."""
    return "\n".join(f"{m.role}: {m.text()}" for m in req.messages)


def _logprobs(ctx: _Ctx, o: CompletionOutput, num_new: int | None = None) -> dict | None:
    if ctx.top_logprobs is None:
        return None
    entries = list(o.logprobs or [])
    if num_new is not None:
        entries = entries[len(entries) - num_new:] if num_new else []
    return chat_logprobs(entries, ctx.token_text, ctx.top_logprobs)


def _response(ctx: _Ctx, out: RequestOutput) -> dict:
    choices = []
    for o in sorted(out.outputs, key=lambda o: o.index):
        message = final_message(ctx.plan, o.text, ctx.opened)
        choices.append({"index": o.index, "message": message, "logprobs": _logprobs(ctx, o),
                        "finish_reason": tool_finish_reason(finish_reason(o.finish_reason),
                                                            len(message.get("tool_calls", ())))})
    return {**ctx.envelope("chat.completion", choices), "usage": finals_usage([out])}


def _delta_chunks(ctx: _Ctx, o: CompletionOutput, deltas: ChoiceDeltas) -> list[dict]:
    out = deltas.feed(o.text_delta) if o.text_delta else []
    if o.finish_reason is not None:
        out += deltas.finish()
    if not out and o.num_new_tokens and ctx.top_logprobs is not None:
        out = [{"content": ""}]
    choices = [{"index": o.index, "delta": delta,
                "logprobs": _logprobs(ctx, o, o.num_new_tokens) if i == 0 else None,
                "finish_reason": None} for i, delta in enumerate(out)]
    reason = tool_finish_reason(finish_reason(o.finish_reason), deltas.num_calls)
    if reason is not None:
        choices.append({"index": o.index, "delta": {}, "logprobs": None,
                        "finish_reason": reason})
    return choices


async def _chunks(ctx: _Ctx, stream: EngineStream, started: Started, state: ServerState
                  ) -> AsyncIterator[list[dict]]:
    # The role chunks go out before the engine's first token: headers and a first event
    # reach the client at once, which is what OpenAI clients expect to see first.
    yield [ctx.chunk([{"index": i, "delta": {"role": "assistant", "content": ""},
                       "logprobs": None, "finish_reason": None}]) for i in range(ctx.n)]
    finished: set[int] = set()
    choice_deltas = {i: ChoiceDeltas(ctx.plan, ctx.opened) for i in range(ctx.n)}
    num_tokens: dict[int, int] = {}
    num_cached = 0
    last: RequestOutput | None = None
    async with aclosing(stream.outputs()) as outputs:
        async for _, out in outputs:
            num_cached = out.num_cached_tokens
            batch = []
            for o in out.outputs:
                if o.index in finished:
                    continue
                num_tokens[o.index] = len(o.token_ids)
                if o.finish_reason is not None:
                    finished.add(o.index)
                # One choice per chunk, as OpenAI sends them.
                batch.extend(ctx.chunk([choice])
                             for choice in _delta_chunks(ctx, o, choice_deltas[o.index]))
            yield batch
            last = out
    if ctx.include_usage:
        yield [{**ctx.chunk([]), "usage": usage([ctx.prompt_len], sum(num_tokens.values()),
                                                      num_cached)}]
    if last is not None and started.cache.stores:  # complete: not cut short
        await store(state, started.cache, _response(ctx, last))
