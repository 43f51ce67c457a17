"""Turn EngineOutputs (token ids) into RequestOutputs (text), one RequestState per request.

Incremental detokenization, stop strings and logprobs bookkeeping.
Imports text/ and the engine's plain types; never torch.
"""
from __future__ import annotations

import time

from cormorant.engine.types import EngineOutput, TokenLogprobs
from cormorant.frontend.outputs import CompletionOutput, RequestOutput, TokenLogprob
from cormorant.sampling_params import SamplingParams
from cormorant.text.detokenizer import IncrementalDetokenizer
from cormorant.text.stop import StopStringMatcher
from cormorant.text.tokenizer import Tokenizer


def _to_logprob(token_id: int, entry: TokenLogprobs) -> TokenLogprob:
    value, top = entry
    return TokenLogprob(token_id=token_id, logprob=value, top=dict(top))


class _SampleState:
    def __init__(self, index: int, tokenizer: Tokenizer, prompt_ids: list[int],
                 params: SamplingParams, incremental: bool = True):
        self.params = params
        # Without a reader of partial text and without stop strings, the text is decoded once
        # when the sample finishes: the same text, without two tokenizer decodes per token on
        # the engine loop's host time (offline generate at batch 256: ~6 ms per step).
        self.incremental = incremental or bool(params.stop)
        self.detok = IncrementalDetokenizer(tokenizer, prompt_ids, params.skip_special_tokens)
        self.stops = StopStringMatcher(params.stop, params.include_stop_str_in_output)
        self.out = CompletionOutput(index=index,
                                    logprobs=[] if params.logprobs is not None else None)
        if params.logprobs is not None:
            self.out.cumulative_logprob = 0.0
        self.pending_delta = ""
        self.pending_tokens = 0

    def update(self, eo: EngineOutput) -> bool:
        """Apply one engine step; True when a stop string ended this sample here."""
        out = self.out
        if out.finished:
            return False
        out.token_ids.extend(eo.new_token_ids)
        self.pending_tokens += len(eo.new_token_ids)
        if eo.new_logprobs and out.logprobs is not None:
            for token_id, entry in zip(eo.new_token_ids, eo.new_logprobs):
                out.logprobs.append(_to_logprob(token_id, entry))
                out.cumulative_logprob += entry[0]
        if not self.incremental:
            if eo.finish_reason is not None:
                self._emit(self.detok.add(out.token_ids) + self.detok.flush())
                out.finish_reason, out.stop_reason = eo.finish_reason, eo.stop_token_id
            return False
        delta = self.detok.add(eo.new_token_ids)
        if eo.finish_reason is not None:
            delta += self.detok.flush()  # a character still incomplete at the end
        if len(out.token_ids) > self.params.min_tokens:
            emit, matched = self.stops.feed(delta)
        else:  # as vLLM: stop strings count only once min_tokens are out
            emit, matched = delta, None
        if matched is not None:
            self._emit(emit)
            out.finish_reason, out.stop_reason = "stop", matched
            return True
        if eo.finish_reason is not None:
            emit += self.stops.flush()
            out.finish_reason = eo.finish_reason
            out.stop_reason = eo.stop_token_id
        self._emit(emit)
        return False

    def _emit(self, text: str) -> None:
        self.out.text += text
        self.pending_delta += text

    def take_delta(self) -> CompletionOutput:
        """A snapshot carrying the text and token count added since the last snapshot."""
        snap = CompletionOutput(
            index=self.out.index, text=self.out.text, token_ids=list(self.out.token_ids),
            text_delta=self.pending_delta, num_new_tokens=self.pending_tokens,
            logprobs=list(self.out.logprobs) if self.out.logprobs is not None else None,
            finish_reason=self.out.finish_reason, stop_reason=self.out.stop_reason,
            cumulative_logprob=self.out.cumulative_logprob)
        self.pending_delta, self.pending_tokens = "", 0
        return snap


class RequestState:
    """Everything the frontend tracks for one request."""

    def __init__(self, req_id: str, prompt_token_ids: list[int], params: SamplingParams,
                 tokenizer: Tokenizer, prompt: str | None = None,
                 arrival_time: float | None = None, incremental: bool = True):
        """incremental=False: the caller reads only the final output (offline generate), so
        samples without stop strings decode their text once, at the end."""
        self.req_id = req_id
        self.prompt_token_ids = prompt_token_ids
        self.prompt = prompt
        self.samples = [_SampleState(i, tokenizer, prompt_token_ids, params, incremental)
                        for i in range(params.n)]
        self.prompt_logprobs: list[TokenLogprob | None] | None = (
            [None] if params.prompt_logprobs is not None else None)
        self.num_cached_tokens = 0
        self.error: str | None = None
        self.arrival_time = arrival_time if arrival_time is not None else time.monotonic()
        self.first_scheduled_time: float | None = None
        self.first_token_time: float | None = None
        self.finished_time: float | None = None

    @property
    def finished(self) -> bool:
        return self.error is not None or all(s.out.finished for s in self.samples)

    def update(self, eo: EngineOutput) -> bool:
        """Apply one engine output; True when a stop string finished that sample (the caller
        must then stop the sequence in the engine)."""
        if eo.error is not None:
            self.error = eo.error
            for s in self.samples:
                s.out.finish_reason = s.out.finish_reason or "abort"
            return False
        self.num_cached_tokens = eo.num_cached_tokens
        if self.first_scheduled_time is None:
            self.first_scheduled_time = eo.first_scheduled_time
        if eo.prompt_logprobs and self.prompt_logprobs is not None:
            start = len(self.prompt_logprobs)
            for offset, entry in enumerate(eo.prompt_logprobs):
                self.prompt_logprobs.append(
                    _to_logprob(self.prompt_token_ids[start + offset], entry))
        if eo.new_token_ids and self.first_token_time is None:
            self.first_token_time = time.monotonic()
        stopped = self.samples[eo.index].update(eo)
        if self.finished and self.finished_time is None:
            self.finished_time = time.monotonic()
        return stopped

    def abort(self) -> None:
        for s in self.samples:
            if not s.out.finished:
                s.out.finish_reason = "abort"
                if not s.incremental:  # the tokens so far, decoded once
                    s._emit(s.detok.add(s.out.token_ids) + s.detok.flush())
                s._emit(s.stops.flush())

    def snapshot(self) -> RequestOutput:
        return RequestOutput(
            req_id=self.req_id, prompt_token_ids=self.prompt_token_ids, prompt=self.prompt,
            outputs=[s.take_delta() for s in self.samples],
            prompt_logprobs=list(self.prompt_logprobs) if self.prompt_logprobs else None,
            num_cached_tokens=self.num_cached_tokens, finished=self.finished, error=self.error,
            arrival_time=self.arrival_time, first_scheduled_time=self.first_scheduled_time,
            first_token_time=self.first_token_time,
            finished_time=self.finished_time)
