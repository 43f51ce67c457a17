"""AsyncLLM: the engine client the server uses, over a core client in a thread or a process.

The engine core runs behind an EngineCoreClient (frontend.core_client): a thread of this
process, or its own process. The asyncio side tokenizes, detokenizes and matches stop strings,
off the engine's critical path. Step outputs come back from the client's thread with
loop.call_soon_threadsafe and are applied to the request's state on the caller's event loop,
which then puts the request's index into the queue the caller owns (`add_request`'s sink):
a token crosses one asyncio queue on its way to the HTTP response. A slow reader gets the
steps coalesced (one marker per unread batch of news; `RequestHandle.take` reads them all).
Closing a request early (client gone, task cancelled) aborts it; the core applies the abort
before its next step, so the blocks are free within one step.
"""
from __future__ import annotations

import asyncio
import logging
import os
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

from cormorant.config import EngineConfig
from cormorant.engine.messages import EngineStats
from cormorant.engine.types import EngineOutput, EngineRequest
from cormorant.frontend.builder import build_engine, build_tokenizer
from cormorant.frontend.core_client import (EngineCoreClient, EngineDeadError,
                                            ProcessCoreClient, ThreadCoreClient,
                                            wants_engine_process)
from cormorant.frontend.default_model import DEFAULT_MODEL_NAME
from cormorant.frontend.output_processor import RequestState
from cormorant.frontend.outputs import RequestOutput
from cormorant.sampling_params import SamplingParams
from cormorant.text.tokenizer import Tokenizer

log = logging.getLogger(__name__)
__all__ = ["AsyncLLM", "EngineDeadError", "RequestHandle"]


async def stream_outputs(sink: asyncio.Queue, handle: Any) -> AsyncIterator[RequestOutput]:
    """A request handle's outputs (`take()` at each wake-up of `sink`) up to the finished one;
    the handle is closed (the request aborted if unfinished) however the caller stops."""
    try:
        while True:
            await sink.get()
            out = handle.take()
            yield out
            if out.finished:
                return
    finally:
        handle.close()


class RequestHandle:
    """One engine request as its caller's event loop sees it. Each time it has news, its
    `index` goes into `sink`; `take()` then returns a RequestOutput with everything new."""

    def __init__(self, llm: "AsyncLLM", state: RequestState, sink: asyncio.Queue,
                 index: int) -> None:
        self._llm = llm
        self.state = state
        self.index = index
        self._sink = sink
        self._loop = asyncio.get_running_loop()
        self._queued = False
        self._closed = False
        self.error: BaseException | None = None

    @property
    def request_id(self) -> str:
        return self.state.req_id

    @property
    def finished(self) -> bool:
        return self.state.finished

    def take(self) -> RequestOutput:
        """The news since the last take; raises EngineDeadError if the engine died."""
        self._queued = False
        if self.error is not None:
            raise EngineDeadError("the engine loop failed") from self.error
        return self.state.snapshot()

    def close(self) -> None:
        """Abort the request in the engine unless it finished; idempotent."""
        if self._closed:
            return
        self._closed = True
        self._llm._requests.pop(self.request_id, None)
        if not self.state.finished and self.error is None:
            self._llm._client.abort(self.request_id)

    # -- from the engine's thread, through call_soon_threadsafe -----------------------------
    def _deliver(self, outputs: list[EngineOutput]) -> None:
        if self._closed:
            return
        for eo in outputs:
            if self.state.update(eo):
                self._llm._client.stop(self.request_id, eo.index)
        if self.state.finished:
            self._llm._requests.pop(self.request_id, None)
        self._notify()

    def _fail(self, error: BaseException) -> None:
        if self.error is None and not self._closed:
            self.error = error
            self._notify()

    def _notify(self) -> None:
        if not self._queued:
            self._queued = True
            self._sink.put_nowait(self.index)

    def _call(self, fn, arg) -> None:
        try:
            self._loop.call_soon_threadsafe(fn, arg)
        except RuntimeError:  # the caller's loop is closed: nobody is listening any more
            pass


class AsyncLLM:
    def __init__(self, client: EngineCoreClient, tokenizer: Tokenizer,
                 model_name: str | None = None) -> None:
        self._client = client
        self.tokenizer = tokenizer
        self.config = client.config
        self.model_config = client.model_config
        self.model_name = model_name or _default_name(self.config.model)
        self._requests: dict[str, RequestHandle] = {}
        client.start(self._on_outputs)

    @classmethod
    def from_config(cls, config: EngineConfig, model_name: str | None = None,
                    engine_process: bool | None = None) -> "AsyncLLM":
        """The engine of `config` in a child process (engine_process None: on CUDA) or in a
        thread of this one."""
        if wants_engine_process(config.device, engine_process):
            return cls(ProcessCoreClient(config), build_tokenizer(config), model_name)
        built = build_engine(config)
        return cls(ThreadCoreClient(built), built.tokenizer, model_name)

    @property
    def client(self) -> EngineCoreClient:
        return self._client

    @property
    def max_model_len(self) -> int:
        return self.config.scheduler.max_model_len

    @property
    def memory_bytes(self) -> int:
        """Weights plus KV cache: what this engine holds on its device."""
        return self._client.memory_bytes

    # -- requests -----------------------------------------------------------------------------
    def add_request(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams,
                    sink: asyncio.Queue, *, index: int = 0, prompt: str | None = None,
                    tenant: str = "", priority: int = 0, weight: float = 1.0,
                    cache_salt: str = "") -> RequestHandle:
        """Start a request whose news goes, as `index`, into `sink` (a queue the caller owns
        and reads on this event loop). tenant, priority, weight: its place in a fair waiting
        queue; cache_salt: its prefix-cache namespace. Close the handle when done."""
        if not self._client.is_alive():
            raise EngineDeadError("the engine loop is not running")
        if request_id in self._requests:
            raise ValueError(f"request id {request_id!r} is already in flight")
        state = RequestState(request_id, list(prompt_token_ids), params, self.tokenizer, prompt)
        handle = RequestHandle(self, state, sink, index)
        self._requests[request_id] = handle
        self._client.add(EngineRequest(request_id, state.prompt_token_ids, params,
                                       tenant=tenant, priority=priority, weight=weight,
                                       cache_salt=cache_salt))
        return handle

    async def generate(self, request_id: str, prompt_token_ids: list[int],
                       params: SamplingParams, prompt: str | None = None, *,
                       tenant: str = "", priority: int = 0, weight: float = 1.0,
                       cache_salt: str = "") -> AsyncIterator[RequestOutput]:
        """Yield a RequestOutput after each engine step with news; the last has finished."""
        sink: asyncio.Queue = asyncio.Queue()
        handle = self.add_request(request_id, prompt_token_ids, params, sink, prompt=prompt,
                                  tenant=tenant, priority=priority, weight=weight,
                                  cache_salt=cache_salt)
        async with aclosing(stream_outputs(sink, handle)) as outputs:  # closed with this one
            async for out in outputs:
                yield out

    async def abort(self, request_id: str) -> None:
        self._client.abort(request_id)

    def stats(self) -> EngineStats:
        return self._client.stats()

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop the engine; requests still open end with EngineDeadError."""
        self._client.shutdown(timeout)
        self._fail_all(EngineDeadError("the engine was shut down"))

    # -- from the engine client's thread ------------------------------------------------------
    def _on_outputs(self, outputs: list[EngineOutput] | BaseException) -> None:
        if isinstance(outputs, BaseException):
            self._fail_all(outputs)
            return
        grouped: dict[str, list[EngineOutput]] = defaultdict(list)
        for eo in outputs:
            grouped[eo.req_id].append(eo)
        for req_id, items in grouped.items():
            handle = self._requests.get(req_id)
            if handle is not None:
                handle._call(handle._deliver, items)

    def _fail_all(self, error: BaseException) -> None:
        for handle in list(self._requests.values()):
            handle._call(handle._fail, error)


def _default_name(model: str) -> str:
    from cormorant.frontend.default_model import default_model_path

    try:
        if model == default_model_path():
            return DEFAULT_MODEL_NAME
    except FileNotFoundError:
        pass
    name = os.path.basename(model.rstrip("/"))
    return name[:-5] if name.endswith(".gguf") else name
