"""The response cache at the HTTP edge: lookup, store when complete, replay as JSON or SSE.

Exact cache (gateway.caching.response_cache): deterministic requests without logprobs, keyed
by the normalized request, the endpoint, the caller's tenant and the answering model's cache
namespace (a swapped-out version or a reload of changed files never hits old entries).
`Cache-Control: no-cache` skips the lookup, `no-store` the store. Semantic cache
(gateway.caching.semantic_cache): opt-in per request (`x-semantic-cache: on`, or a similarity
threshold in (0, 1]). Every generation response says `x-cache: hit` or `miss`.
"""
from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from cormorant.gateway.auth.middleware import current_principal
from cormorant.gateway.caching.response_cache import cache_key
from cormorant.hosting.pool import Deployment
from cormorant.server.errors import APIError
from cormorant.server.responses import json_response, new_id
from cormorant.server.sse import SSEResponse, sse_body

logger = logging.getLogger("cormorant.server")

CACHE_HEADER = "x-cache"
SIMILARITY_HEADER = "x-cache-similarity"
SEMANTIC_HEADER = "x-semantic-cache"
NOT_IN_KEY = frozenset({"stream", "stream_options", "user", "model"})


@dataclass
class CachePlan:
    key: str | None = None  # exact cache key; None: not cacheable
    write: bool = False
    semantic: tuple[str, list[float]] | None = None  # (namespace, prompt vector)
    hit: dict | None = None
    similarity: float | None = None
    labels: tuple[str, str] = ("", "")

    @property
    def stores(self) -> bool:
        """Whether the complete response goes into a cache (so is worth assembling)."""
        return self.hit is None and self.write and (self.key is not None
                                                    or self.semantic is not None)

    def headers(self) -> dict[str, str]:
        out = {CACHE_HEADER: "hit" if self.hit is not None else "miss"}
        if self.similarity is not None:
            out[SIMILARITY_HEADER] = f"{self.similarity:.4f}"
        return out


@dataclass
class CacheQuery:
    """What the caches need of one request, whatever model answers it: made once."""
    request: dict  # normalized: every field with its default, minus NOT_IN_KEY
    deterministic: bool
    text: str | None  # the prompt text, for the semantic cache


def cache_query(request: Request, state: Any, req: Any, deterministic: bool,
                text: Callable[[], str | None]) -> CacheQuery | None:
    """None when no cache can be involved: nothing is normalized on the hot path."""
    if state.response_cache is None and state.semantic_cache is None \
            and SEMANTIC_HEADER not in request.headers:
        return None
    return CacheQuery(req.model_dump(mode="json", exclude=set(NOT_IN_KEY)), deterministic,
                      text())


async def plan_cache(request: Request, state: Any, deployment: Deployment, endpoint: str,
                     query: CacheQuery | None) -> CachePlan:
    directives = {d.strip().lower() for d in
                  request.headers.get("cache-control", "").split(",")}
    plan = CachePlan(labels=deployment.served.labels)
    principal = current_principal()
    tenant = principal.tenant if principal is not None else ""
    if query is None:
        return plan
    body = query.request
    cache = state.response_cache
    if cache is not None and query.deterministic:
        plan.key = cache_key(tenant=tenant, model_instance=deployment.served.cache_namespace,
                             endpoint=endpoint, request=body)
        plan.write = "no-store" not in directives
        if "no-cache" not in directives:
            plan.hit = await cache.get(plan.key)
            state.telemetry.metrics.observe_response_cache(plan.labels, plan.hit is not None)
    threshold = _semantic_threshold(request)
    if plan.hit is None and threshold is not None and query.text:
        await _plan_semantic(state, plan, tenant, deployment, endpoint, body, query.text,
                             threshold, directives)
    return plan


def _semantic_threshold(request: Request) -> float | None:
    raw = request.headers.get(SEMANTIC_HEADER)
    if raw is None or raw.strip().lower() in ("", "off", "0", "false"):
        return None
    if raw.strip().lower() in ("on", "1", "true"):
        return -1.0  # the configured threshold
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not 0.0 < value <= 1.0:
        raise APIError(400, f"The {SEMANTIC_HEADER} header must be on, off or a similarity "
                       "threshold in (0, 1].", code="invalid_header")
    return value


async def _plan_semantic(state: Any, plan: CachePlan, tenant: str, deployment: Deployment,
                         endpoint: str, body: dict, text: str, threshold: float,
                         directives: set[str]) -> None:
    cache, model = state.semantic_cache, state.config.semantic_cache_model
    if cache is None or model is None:
        raise APIError(400, f"{SEMANTIC_HEADER} was sent but this server has no semantic "
                       "cache (serve --semantic-cache-model).", code="invalid_header")
    params = {k: v for k, v in body.items() if k not in ("prompt", "messages")}
    namespace = cache_key(tenant=tenant, model_instance=deployment.served.cache_namespace,
                          endpoint=endpoint, request=params)
    lease = await state.acquire(model, None, "embed")
    try:
        encoder = lease.deployment.served.encoder
        ids = encoder.tokenize(text)[:encoder.max_model_len]
        vector = (await encoder.embed([ids]))[0]
    finally:
        lease.release()
    plan.semantic = (namespace, vector)
    if "no-cache" not in directives:
        found = cache.lookup(namespace, vector, None if threshold < 0 else threshold)
        if found is not None:
            plan.hit, plan.similarity = found
    plan.write = plan.write or "no-store" not in directives


async def store(state: Any, plan: CachePlan, body: dict) -> None:
    """Keep a complete response for later hits (never one that failed or was cut short)."""
    if not plan.stores:
        return
    entry = {k: v for k, v in body.items() if k not in ("id", "created")}
    try:
        if plan.key is not None:
            await state.response_cache.put(plan.key, entry)
        if plan.semantic is not None:
            state.semantic_cache.add(*plan.semantic, entry)
    except Exception:  # the cache must never fail a served request
        logger.exception("response cache: could not store an entry")


def replay(entry: dict, endpoint: str, stream: bool, include_usage: bool,
           headers: dict[str, str], max_error_chars: int) -> Response:
    """A cached response, as JSON or as the SSE stream a live request would have sent."""
    if not stream:
        prefix = "chatcmpl" if endpoint == "chat" else "cmpl"
        return json_response({"id": new_id(prefix), "created": int(time.time()), **entry},
                             headers=headers)
    chunks = (replay_chat_chunks if endpoint == "chat" else replay_completion_chunks)(
        entry, include_usage)

    async def once() -> AsyncIterator[list[dict]]:
        yield chunks

    return SSEResponse(sse_body(once(), max_error_chars), headers=headers)


def replay_chat_chunks(entry: dict, include_usage: bool) -> list[dict]:
    """A cached chat completion as the chunks a live stream sends: role, content, finish."""
    base = {"id": new_id("chatcmpl"), "object": "chat.completion.chunk",
            "created": int(time.time()), "model": entry["model"],
            "system_fingerprint": entry["system_fingerprint"]}
    null_usage = {"usage": None} if include_usage else {}
    chunks = []
    for c in entry["choices"]:
        i = c["index"]
        deltas = [*_message_deltas(c["message"]), {}]
        for k, delta in enumerate(deltas):
            reason = c["finish_reason"] if k == len(deltas) - 1 else None
            chunks.append({**base, "choices": [{"index": i, "delta": delta, "logprobs": None,
                                                "finish_reason": reason}], **null_usage})
    if include_usage:
        chunks.append({**base, "choices": [], "usage": entry["usage"]})
    return chunks


def _message_deltas(message: dict) -> list[dict]:
    """A chat message as stream deltas: role, reasoning, content, then each tool call (its
    header, then its arguments), as server.chat_output streams them."""
    deltas: list[dict] = [{"role": "assistant", "content": ""}]
    if message.get("reasoning_content"):
        deltas.append({"reasoning_content": message["reasoning_content"]})
    if message.get("content") is not None:
        deltas.append({"content": message["content"]})
    for k, call in enumerate(message.get("tool_calls") or []):
        function = call["function"]
        deltas.append({"tool_calls": [{"index": k, "id": call["id"], "type": "function",
                                       "function": {"name": function["name"],
                                                    "arguments": ""}}]})
        deltas.append({"tool_calls": [{"index": k,
                                       "function": {"arguments": function["arguments"]}}]})
    return deltas


def replay_completion_chunks(entry: dict, include_usage: bool) -> list[dict]:
    base = {"id": new_id("cmpl"), "object": "text_completion", "created": int(time.time()),
            "model": entry["model"], "system_fingerprint": entry["system_fingerprint"]}
    null_usage = {"usage": None} if include_usage else {}
    chunks = [{**base, "choices": [{"index": c["index"], "text": c["text"], "logprobs": None,
                                    "finish_reason": c["finish_reason"]}], **null_usage}
              for c in entry["choices"]]
    if include_usage:
        chunks.append({**base, "choices": [], "usage": entry["usage"]})
    return chunks

