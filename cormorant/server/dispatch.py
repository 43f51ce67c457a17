"""Starting one generation request on a model version, with its fallbacks.

Route, cache lookup, admission, the engine stream, and the fallbacks when the model refuses or
fails first.
`start_generation` tries the request's model, then that model's fallbacks in order (registry
`fallbacks`). A candidate is skipped when it cannot be loaded, when admission refuses it
(503: overloaded, or 504), or when its engine fails before the first output: with another
candidate left, the first output is awaited before the response starts, so a failure there
can still be retried once on the next one. 4xx errors (bad input, quotas) are the caller's and
are never retried. The response names the version that answered (`x-model-version`) and, when
it was a fallback, the model it stood in for (`x-fallback-from`). The engine requests carry the
caller's prefix-cache salt (gateway.auth.keys.prefix_cache_salt: the key's namespace and the
request's own `cache_salt`), so keys never share cached prompt blocks unless grouped.
Imports server modules, hosting's pool lease and the gateway's key namespaces.
"""
from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from cormorant.gateway.auth.keys import Principal, prefix_cache_salt
from cormorant.gateway.auth.middleware import get_principal
from cormorant.hosting.pool import Lease
from cormorant.hosting.served import ServedGenerator
from cormorant.server.cached_responses import CachePlan, CacheQuery, plan_cache, store
from cormorant.server.errors import APIError
from cormorant.server.generation import EngineStream, Job, collect_unless_disconnected
from cormorant.server.responses import client_gone, json_response
from cormorant.server.sse import SSEResponse, sse_body
from cormorant.server.state import ServerState

FALLBACK_HEADER = "x-fallback-from"
RETRYABLE = frozenset({500, 503, 504})
# A callable a middleware may leave in the request's scope state: run once the caches missed,
# before admission, it raises the APIError the request gets (scaleout.coldstart: no engine
# replica runs), so a cached answer is still served and a refusal costs no quota.
DEFERRED_REFUSAL = "deferred_refusal"


@dataclass
class Prepared:
    """What a route makes of its request for one model: engine jobs and what it needs later
    to shape the response (prompts, params, ...)."""
    jobs: list[Job]
    prompt_lens: list[int]
    params: list[Any]
    extra: Any = None


@dataclass
class Started:
    served: ServedGenerator
    prepared: Prepared
    cache: CachePlan
    stream: EngineStream | None = None  # None: answered from the cache
    cached: dict | None = None
    headers: dict[str, str] = field(default_factory=dict)


async def start_generation(request: Request, state: ServerState, model: str | None,
                           user: str | None, endpoint: str,
                           prepare: Callable[[ServedGenerator], Awaitable[Prepared]],
                           query: CacheQuery | None = None,
                           cache_salt: str | None = None) -> Started:
    """query: the request as the caches see it (server.cached_responses.cache_query);
    cache_salt: the request's own prefix-cache salt, if it sent one."""
    principal = get_principal(request) or Principal.anonymous()
    salt = prefix_cache_salt(principal, cache_salt)
    candidates = state.candidates(model, user)
    for i, (name, model_id) in enumerate(candidates):
        is_last = i == len(candidates) - 1
        try:
            started = await _try(request, state, name, model_id, user, endpoint, prepare,
                                 query, is_last, salt)
        except APIError as err:
            if is_last or err.status not in RETRYABLE:
                raise
            continue
        if i > 0:
            started.headers[FALLBACK_HEADER] = candidates[0][0]
        return started
    raise AssertionError("unreachable: the last candidate raises or returns")


async def _try(request: Request, state: ServerState, name: str, model_id: str | None,
               user: str | None, endpoint: str,
               prepare: Callable[[ServedGenerator], Awaitable[Prepared]],
               query: CacheQuery | None, is_last: bool, cache_salt: str) -> Started:
    state.lifecycle.check_accepting()
    lease: Lease = await state.acquire(name, user, "generate", model_id)
    try:
        served: ServedGenerator = lease.deployment.served
        prepared = await prepare(served)
        cache = await plan_cache(request, state, lease.deployment, endpoint, query)
        headers = served.headers()
        if cache.hit is not None:
            lease.release()
            return Started(served, prepared, cache, cached=cache.hit,
                           headers={**headers, **cache.headers()})
        refuse = request.scope.get("state", {}).get(DEFERRED_REFUSAL)
        if refuse is not None:
            refuse()
        ticket = await served.admission.admit(request, prepared.prompt_lens, prepared.params)
        stream = EngineStream(served.engine, prepared.jobs, ticket, state.lifecycle,
                              on_close=lease.release, cache_salt=cache_salt)
    except BaseException:
        lease.release()
        raise
    if not is_last:
        try:
            await stream.first()
        except APIError:
            await stream.aclose()
            raise
    return Started(served, prepared, cache, stream=stream,
                   headers={**headers, **cache.headers()})


async def collect_finals(request: Request, started: Started) -> list | None:
    """A started (not cached) generation's final outputs, the stream closed either way;
    None if the client left first."""
    stream = started.stream
    assert stream is not None
    try:
        return await collect_unless_disconnected(request.receive, stream.collect())
    finally:
        await stream.aclose()


async def respond(request: Request, state: ServerState, started: Started, streaming: bool,
                  chunks: Callable[[], AsyncIterator[list[dict]]],
                  response: Callable[[list], dict]) -> Response:
    """The answer to a started (not cached) generation: an SSE stream of `chunks()`, or the
    JSON body `response(finals)`, stored in the response cache; nothing if the client left."""
    stream = started.stream
    assert stream is not None
    if streaming:
        return SSEResponse(sse_body(chunks(), state.config.max_error_chars),
                           headers=started.headers, on_close=stream.aclose)
    finals = await collect_finals(request, started)
    if finals is None:
        return client_gone()
    body = response(finals)
    await store(state, started.cache, body)
    return json_response(body, headers=started.headers)
