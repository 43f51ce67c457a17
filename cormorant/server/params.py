"""From a validated request model to SamplingParams, with the checks that need the model.

OpenAI's defaults are applied here (temperature 1, top_p 1, completions max_tokens 16), the
context budget is enforced (400 with the numbers when the client asked for too much; a clamp
when it did not ask), and SamplingParams.validate() supplies the engine's own ranges.
Imports sampling_params and server modules (protocol, errors).
"""
from __future__ import annotations

from cormorant.sampling_params import (DEFAULT_TEMPERATURE, SamplingParams, SamplingParamsError,
                                       StructuredOutputs)
from cormorant.server.errors import APIError, from_sampling_error
from cormorant.server.protocol import (ChatCompletionRequest, CompletionRequest,
                                       SamplingFields)

COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for the legacy completions endpoint


def resolve_max_tokens(requested: int | None, default: int | None, prompt_len: int,
                       max_model_len: int, prompt_param: str, max_tokens_param: str) -> int:
    room = max_model_len - prompt_len
    if room < 1:
        raise APIError(400, f"This model's maximum context length is {max_model_len} tokens. "
                       f"However, your {prompt_param} resulted in {prompt_len} tokens, which "
                       "leaves no room for a completion. Please reduce the length of the "
                       f"{prompt_param}.", param=prompt_param, code="context_length_exceeded")
    if requested is None:
        return room if default is None else min(default, room)
    if requested > room:
        raise APIError(400, f"This model's maximum context length is {max_model_len} tokens. "
                       f"However, you requested {prompt_len + requested} tokens ({prompt_len} "
                       f"in the {prompt_param}, {requested} in the completion). Please reduce "
                       f"the length of the {prompt_param} or the completion.",
                       param=max_tokens_param, code="context_length_exceeded")
    return requested


def _common(req: SamplingFields, max_tokens: int, logprobs: int | None,
            prompt_logprobs: int | None, structured: StructuredOutputs | None
            ) -> SamplingParams:
    stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    return SamplingParams(
        n=req.n,
        temperature=DEFAULT_TEMPERATURE if req.temperature is None else req.temperature,
        top_p=1.0 if req.top_p is None else req.top_p,
        top_k=0 if req.top_k is None else req.top_k,
        min_p=0.0 if req.min_p is None else req.min_p,
        repetition_penalty=1.0 if req.repetition_penalty is None else req.repetition_penalty,
        presence_penalty=req.presence_penalty or 0.0,
        frequency_penalty=req.frequency_penalty or 0.0,
        logit_bias={int(k): float(v) for k, v in req.logit_bias.items()} if req.logit_bias
        else None,
        min_tokens=req.min_tokens,
        max_tokens=max_tokens,
        stop=stop,
        stop_token_ids=list(req.stop_token_ids or []),
        include_stop_str_in_output=req.include_stop_str_in_output,
        ignore_eos=req.ignore_eos,
        seed=req.seed,
        logprobs=logprobs,
        prompt_logprobs=prompt_logprobs,
        skip_special_tokens=req.skip_special_tokens,
        structured_outputs=structured,
    )


def _validated(params: SamplingParams, vocab_size: int) -> SamplingParams:
    try:
        params.validate(vocab_size)
    except SamplingParamsError as exc:
        raise from_sampling_error(exc) from None
    return params


def completion_params(req: CompletionRequest, prompt_len: int, max_model_len: int,
                      vocab_size: int, structured: StructuredOutputs | None = None
                      ) -> SamplingParams:
    """structured: the request's checked constraint (server.structured)."""
    max_tokens = resolve_max_tokens(req.max_tokens, COMPLETIONS_DEFAULT_MAX_TOKENS, prompt_len,
                                    max_model_len, "prompt", "max_tokens")
    # echo + logprobs: OpenAI returns the prompt tokens' logprobs too.
    prompt_logprobs = req.logprobs if req.echo and req.logprobs is not None else None
    return _validated(_common(req, max_tokens, req.logprobs, prompt_logprobs, structured),
                      vocab_size)


def chat_params(req: ChatCompletionRequest, prompt_len: int, max_model_len: int,
                vocab_size: int, structured: StructuredOutputs | None = None
                ) -> SamplingParams:
    """structured: the request's checked constraint (server.structured)."""
    requested = req.max_completion_tokens if req.max_completion_tokens is not None \
        else req.max_tokens
    param = "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
    max_tokens = resolve_max_tokens(requested, None, prompt_len, max_model_len, "messages",
                                    param)
    return _validated(_common(req, max_tokens, chat_top_logprobs(req), None, structured),
                      vocab_size)


def chat_top_logprobs(req: ChatCompletionRequest) -> int | None:
    """What the chat request asked for: top-k alternatives per token; None: no logprobs."""
    return (req.top_logprobs or 0) if req.logprobs else None


def with_drift_logprobs(params: SamplingParams, drift_logprobs: bool) -> SamplingParams:
    """Drift monitoring's confidence feature (gateway.telemetry.drift: mean_logprob): the
    chosen tokens' logprobs (logprobs=0, one logsumexp in the sampler) for a request that
    asked for none. Responses still carry none: the routes render what the request asked."""
    if drift_logprobs and params.logprobs is None:
        params.logprobs = 0
    return params
