"""RayEngineClient: the server's engine seam (server.engine_client) over Ray Serve replicas.

The ingress keeps the tokenizer (prompts, chat templates, token text) and the whole HTTP
surface; generation goes to the `cormorant-engine` deployment through a streaming
DeploymentHandle, routed by scaleout.router on the prompt's prefix hashes. Each request is one
asyncio task reading the replica's step messages into an OutputAssembler and putting the
request's index into the caller's sink, exactly as AsyncLLM's handles do.
Failover: a stream that breaks (its replica died, was stopped, or is unreachable) before any
token arrived is sent again (the router skips the dead replica; Serve replaces it); one that
breaks after its first token ends with EngineDeadError, which the server turns into an error
event. Nothing waits forever: a request that cannot be placed fails after `max_attempts`.
Every step message carries its replica's EngineStats; the application's request router lists
every running replica with the stats it reported within the last routing-stats period
(scaleout.live_view). `replica_stats()` merges the two (for /metrics and admission): every
replica the router lists, each with the fresher figures; a replica it no longer lists shows
only while this ingress still streams from it (a stopping replica drains), then leaves.
Without a router view (none in this process yet) it falls back to the replicas seen in
the last STALE_S seconds.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from typing import Any

from cormorant.config import EngineConfig
from cormorant.engine.messages import EngineStats
from cormorant.frontend.async_llm import stream_outputs
from cormorant.frontend.builder import build_tokenizer
from cormorant.frontend.core_client import EngineDeadError
from cormorant.frontend.outputs import RequestOutput
from cormorant.models.loader import load_model_config
from cormorant.sampling_params import SamplingParams
from cormorant.scaleout.live_view import live_stats
from cormorant.scaleout.prefix import prefix_hashes
from cormorant.scaleout.wire import OutputAssembler, read_stats, request_message

log = logging.getLogger(__name__)
# Without a router view: a replica not heard of for this long leaves stats() and /metrics;
# one whose stream broke leaves at once.
STALE_S = 120.0
# A step message this recent is fresher than the router's figures (they lag up to a period);
# a replica the router no longer lists stays this long after its last message.
FRESH_S = 2.0
RETRY_BACKOFF_S = 0.2


class RayRequestHandle:
    """One request in flight on some replica (server.engine_client.RequestHandleLike)."""

    def __init__(self, client: "RayEngineClient", message: dict[str, Any],
                 hashes: list[int], n: int, sink: asyncio.Queue, index: int) -> None:
        self.request_id = message["request_id"]
        self.index = index
        self.replica: str | None = None
        self.num_attempts = 0
        self.error: BaseException | None = None
        self._client, self._message, self._hashes = client, message, hashes
        self._assembler = OutputAssembler(self.request_id, message["prompt_token_ids"], n)
        self._sink = sink
        self._queued = False
        self._task = asyncio.get_running_loop().create_task(self._run())

    @property
    def finished(self) -> bool:
        return self._assembler.out.finished

    def take(self) -> RequestOutput:
        self._queued = False
        if self.error is not None:
            raise EngineDeadError(f"the replica failed: {self.error}") from self.error
        return self._assembler.take()

    def close(self) -> None:
        """Cancel the stream (Serve cancels the replica's generator: the engine aborts)."""
        if not self._task.done():
            self._task.cancel()
        self._client._requests.pop(self.request_id, None)

    def _notify(self) -> None:
        if not self._queued:
            self._queued = True
            self._sink.put_nowait(self.index)

    async def _run(self) -> None:
        client = self._client
        while True:
            self.num_attempts += 1
            stream = client.handle.generate.remote(self._message, prefix_hashes=self._hashes)
            try:
                async for message in stream:
                    client.saw(message)
                    self.replica = message["replica"]
                    self._assembler.apply(message)
                    self._notify()
                if self._assembler.out.finished:
                    return
                raise RuntimeError("the replica's stream ended before the request finished")
            except asyncio.CancelledError:
                stream.cancel()
                raise
            except Exception as exc:  # the replica died, stopped, or could not be reached
                stream.cancel()
                if self.replica is not None:
                    client.replicas.pop(self.replica, None)
                if self._assembler.has_tokens or self.num_attempts >= client.max_attempts:
                    log.warning("request %s failed on its replica: %r", self.request_id, exc)
                    self.error = exc
                    self._notify()
                    return
                log.info("request %s: replica failed before its first token (%r); retrying",
                         self.request_id, exc)
                client.num_retries += 1
                await asyncio.sleep(RETRY_BACKOFF_S * self.num_attempts)


class RayEngineClient:
    """server.engine_client.EngineClient over a DeploymentHandle of EngineReplica."""

    def __init__(self, handle: Any, config: EngineConfig, model_name: str,
                 max_attempts: int = 3, *, model_version: str = "",
                 on_shutdown: Callable[[], None] | None = None) -> None:
        """model_version: the registry's version (a label of /metrics); on_shutdown: runs
        once when the client shuts down (scaleout.model_apps deletes the version's replicas)."""
        self.handle = handle.options(stream=True)
        self.config = config
        self.tokenizer = build_tokenizer(config)
        self.model_config = load_model_config(config.model)
        self.max_model_len = (config.scheduler.max_model_len
                              or self.model_config.max_position_embeddings)
        self.model_name = model_name
        self.model_version = model_version
        self._on_shutdown = on_shutdown
        self.max_attempts = max_attempts
        self.num_retries = 0
        self.replicas: dict[str, tuple[EngineStats, float]] = {}  # id -> (stats, seen at)
        self._requests: dict[str, RayRequestHandle] = {}
        self._closed = False

    def add_request(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams,
                    sink: asyncio.Queue, *, index: int = 0, tenant: str = "",
                    priority: int = 0, weight: float = 1.0, cache_salt: str = "",
                    **_: Any) -> RayRequestHandle:
        if self._closed:
            raise EngineDeadError("the client was shut down")
        if request_id in self._requests:
            raise ValueError(f"request id {request_id!r} is already in flight")
        message = request_message(request_id, prompt_token_ids, params, tenant=tenant,
                                  priority=priority, weight=weight, cache_salt=cache_salt)
        hashes = prefix_hashes(list(prompt_token_ids), self.config.cache.block_size, cache_salt)
        handle = RayRequestHandle(self, message, hashes, params.n, sink, index)
        self._requests[request_id] = handle
        return handle

    async def generate(self, request_id: str, prompt_token_ids: list[int],
                       params: SamplingParams, *, tenant: str = "", priority: int = 0,
                       weight: float = 1.0, cache_salt: str = "", **_: Any
                       ) -> AsyncIterator[RequestOutput]:
        sink: asyncio.Queue = asyncio.Queue()
        handle = self.add_request(request_id, prompt_token_ids, params, sink, tenant=tenant,
                                  priority=priority, weight=weight, cache_salt=cache_salt)
        async with aclosing(stream_outputs(sink, handle)) as outputs:  # closed with this one
            async for out in outputs:
                yield out

    async def abort(self, request_id: str) -> None:
        handle = self._requests.get(request_id)
        if handle is not None:
            handle.close()

    def saw(self, message: dict[str, Any]) -> None:
        """A step message arrived: keep its replica's stats, stamped on our clock."""
        self.replicas[message["replica"]] = (read_stats(message), time.monotonic())

    def replica_stats(self) -> dict[str, EngineStats]:
        """replica id -> its latest stats: every replica running now (see the module)."""
        now = time.monotonic()
        for rid in [rid for rid, (_, at) in self.replicas.items() if now - at >= STALE_S]:
            self.replicas.pop(rid, None)  # long gone: forgotten
        return merge_stats(live_stats(self.handle.app_name), self.replicas, now)

    def stats(self) -> EngineStats:
        """The replicas' figures summed. Liveness is Serve's business (health checks replace a
        dead replica), so the ingress's watchdog sees a live loop with no stalled work."""
        total = EngineStats(is_loop_alive=not self._closed)
        for s in self.replica_stats().values():
            for f in dataclasses.fields(EngineStats):
                if f.type == "int":
                    setattr(total, f.name, getattr(total, f.name) + getattr(s, f.name))
        return total

    def shutdown(self, timeout: float = 10.0) -> None:
        if self._closed:
            return
        self._closed = True
        for handle in list(self._requests.values()):
            handle.close()
        if self._on_shutdown is not None:
            self._on_shutdown()


def merge_stats(live: dict[str, EngineStats] | None,
                seen: dict[str, tuple[EngineStats, float]], now: float
                ) -> dict[str, EngineStats]:
    """live: the router's view (None: none); seen: replica -> (stats of its last step
    message, when on `now`'s clock). Every live replica, with its step message's stats when
    they are under FRESH_S old; a replica not live only while its messages are that fresh."""
    if live is None:
        return {rid: s for rid, (s, at) in seen.items() if now - at < STALE_S}
    fresh = {rid: s for rid, (s, at) in seen.items() if now - at < FRESH_S}
    return {**live, **fresh}
