"""What crosses between the ingress and a replica: plain msgpack-able dicts, never pickle.

A request goes out as `request_message(...)` (ids, SamplingParams and EngineStats as
engine.messages' msgpack bytes); a replica answers with one `output_message` per engine step
that had news: only the step's deltas (new ids, text, logprobs), the replica's id and its
EngineStats. `OutputAssembler` rebuilds the cumulative RequestOutput on the ingress, restamping
the timings on the ingress's clock (a replica's monotonic clock means nothing there).
"""
from __future__ import annotations

import time
from typing import Any

from cormorant.engine.messages import EngineStats, decode, encode
from cormorant.frontend.outputs import CompletionOutput, RequestOutput, TokenLogprob
from cormorant.sampling_params import SamplingParams


def request_message(request_id: str, prompt_token_ids: list[int], params: SamplingParams, *,
                    tenant: str = "", priority: int = 0, weight: float = 1.0,
                    cache_salt: str = "") -> dict[str, Any]:
    return {"request_id": request_id, "prompt_token_ids": list(prompt_token_ids),
            "params": encode(params), "tenant": tenant, "priority": priority,
            "weight": weight, "cache_salt": cache_salt}


def read_request(message: dict[str, Any]) -> tuple[str, list[int], SamplingParams, dict]:
    """(request id, prompt ids, params, the fair-queue keywords) of a request_message."""
    params = decode(message["params"])
    if not isinstance(params, SamplingParams):
        raise ValueError("params must be SamplingParams")
    extra = {k: message[k] for k in ("tenant", "priority", "weight", "cache_salt")}
    return str(message["request_id"]), [int(t) for t in message["prompt_token_ids"]], params, extra


def _logprob_row(entry: TokenLogprob | None) -> list | None:
    if entry is None:
        return None
    return [entry.token_id, entry.logprob, [[k, v] for k, v in entry.top.items()]]


def _logprob(row: list | None) -> TokenLogprob | None:
    if row is None:
        return None
    return TokenLogprob(int(row[0]), float(row[1]), {int(k): float(v) for k, v in row[2]})


def output_message(out: RequestOutput, replica_id: str, stats: EngineStats,
                   first: bool) -> dict[str, Any]:
    """One step's news of `out` (a snapshot whose deltas are new since the last one)."""
    samples = []
    for o in out.outputs:
        new_ids = o.token_ids[len(o.token_ids) - o.num_new_tokens:] if o.num_new_tokens else []
        new_lp = (o.logprobs[len(o.logprobs) - o.num_new_tokens:]
                  if o.logprobs is not None and o.num_new_tokens else [])
        samples.append({"index": o.index, "text_delta": o.text_delta, "new_token_ids": new_ids,
                        "new_logprobs": [_logprob_row(e) for e in new_lp],
                        "has_logprobs": o.logprobs is not None,
                        "finish_reason": o.finish_reason, "stop_reason": o.stop_reason,
                        "cumulative_logprob": o.cumulative_logprob})
    queued_s = (out.first_scheduled_time - out.arrival_time
                if out.first_scheduled_time is not None else None)
    message = {"samples": samples, "num_cached_tokens": out.num_cached_tokens,
               "finished": out.finished, "error": out.error, "queued_s": queued_s,
               "replica": replica_id, "stats": encode(stats)}
    if first and out.prompt_logprobs is not None:
        message["prompt_logprobs"] = [_logprob_row(e) for e in out.prompt_logprobs]
    return message


class OutputAssembler:
    """The ingress's view of one request: cumulative outputs rebuilt from step messages."""

    def __init__(self, request_id: str, prompt_token_ids: list[int], n: int) -> None:
        self.out = RequestOutput(req_id=request_id, prompt_token_ids=list(prompt_token_ids),
                                 outputs=[CompletionOutput(index=i) for i in range(n)],
                                 arrival_time=time.monotonic())
        self.has_tokens = False  # a first token came: the request can no longer be retried

    def apply(self, message: dict[str, Any]) -> None:
        """Fold one step message in; deltas accumulate until `take` hands them out."""
        now, out = time.monotonic(), self.out
        for s in message["samples"]:
            o = out.outputs[s["index"]]
            new_ids = [int(t) for t in s["new_token_ids"]]
            o.token_ids.extend(new_ids)
            o.num_new_tokens += len(new_ids)
            o.text += s["text_delta"]
            o.text_delta += s["text_delta"]
            if s["has_logprobs"]:
                o.logprobs = (o.logprobs or []) + [_logprob(r) for r in s["new_logprobs"]]
            o.finish_reason, o.stop_reason = s["finish_reason"], s["stop_reason"]
            o.cumulative_logprob = s["cumulative_logprob"]
            if new_ids and not self.has_tokens:
                self.has_tokens = True
                out.first_token_time = now
        if "prompt_logprobs" in message:
            out.prompt_logprobs = [_logprob(r) for r in message["prompt_logprobs"]]
        if message["queued_s"] is not None and out.first_scheduled_time is None:
            out.first_scheduled_time = out.arrival_time + float(message["queued_s"])
        out.num_cached_tokens = int(message["num_cached_tokens"])
        out.error = message["error"]
        if message["finished"]:
            out.finished, out.finished_time = True, now

    def take(self) -> RequestOutput:
        """A snapshot with the deltas since the last take (AsyncLLM's RequestHandle shape)."""
        out = self.out
        snap = RequestOutput(**{**out.__dict__, "outputs": [
            CompletionOutput(**{**o.__dict__, "token_ids": list(o.token_ids),
                                "logprobs": list(o.logprobs) if o.logprobs is not None
                                else None})
            for o in out.outputs]})
        for o in out.outputs:
            o.text_delta, o.num_new_tokens = "", 0
        return snap


def read_stats(message: dict[str, Any]) -> EngineStats:
    stats = decode(message["stats"])
    if not isinstance(stats, EngineStats):
        raise ValueError("stats must be EngineStats")
    return stats
