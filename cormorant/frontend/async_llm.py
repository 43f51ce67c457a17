"""AsyncLLM: the engine client the server uses. The engine loop runs in its own thread; the
asyncio side tokenizes, detokenizes and matches stop strings, off the loop's critical path.

Commands flow to the loop through a thread-safe inbox (add / abort / stop); step outputs flow
back with loop.call_soon_threadsafe into one asyncio queue per request. Closing a request's
generator early (client gone, task cancelled) aborts it; the loop applies the abort before its
next step, so the blocks are free within one step.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import queue
import threading
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass

from cormorant.config import EngineConfig
from cormorant.engine.core import EngineStats
from cormorant.engine.scheduler import WaitingQueue
from cormorant.engine.types import EngineOutput, EngineRequest
from cormorant.frontend.builder import BuiltEngine, build_engine
from cormorant.frontend.default_model import DEFAULT_MODEL_NAME
from cormorant.frontend.output_processor import RequestState
from cormorant.frontend.outputs import RequestOutput
from cormorant.sampling_params import SamplingParams

log = logging.getLogger(__name__)


@dataclass
class LoopStats(EngineStats):
    last_step_time: float = 0.0  # monotonic time of the loop's last iteration
    is_loop_alive: bool = True
    has_pending_work: bool = False


class EngineDeadError(RuntimeError):
    pass


class AsyncLLM:
    def __init__(self, built: BuiltEngine, model_name: str | None = None, warmup: bool = True):
        self.built = built
        self.core = built.core
        self.tokenizer = built.tokenizer
        self.model_config = built.model_config
        self.config = built.config
        self.model_name = model_name or _default_name(built.config.model)
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._streams: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self._stop = threading.Event()
        self._stats = self._snapshot(time.monotonic())
        self.error: BaseException | None = None
        self.is_ready = False
        if warmup:
            self._warmup()
        self.is_ready = True
        self._thread = threading.Thread(target=self._loop, name="cormorant-engine", daemon=True)
        self._thread.start()

    @classmethod
    def from_config(cls, config: EngineConfig, model_name: str | None = None,
                    waiting: WaitingQueue | None = None) -> "AsyncLLM":
        return cls(build_engine(config, waiting), model_name)

    @property
    def max_model_len(self) -> int:
        return self.config.scheduler.max_model_len

    @property
    def memory_bytes(self) -> int:
        """Weights plus KV cache: what this engine holds on its device."""
        return self.built.runner.memory_bytes

    # -- the asyncio side -------------------------------------------------------------------
    async def generate(self, request_id: str, prompt_token_ids: list[int],
                       params: SamplingParams, prompt: str | None = None, *,
                       tenant: str = "", priority: int = 0, weight: float = 1.0,
                       cache_salt: str = "") -> AsyncIterator[RequestOutput]:
        """Yield a RequestOutput after each engine step with news; the last has finished.
        tenant, priority, weight: the request's place in a fair waiting queue; cache_salt:
        its prefix-cache namespace (EngineRequest.cache_salt)."""
        if not self._alive():
            raise EngineDeadError("the engine loop is not running")
        if request_id in self._streams:
            raise ValueError(f"request id {request_id!r} is already in flight")
        state = RequestState(request_id, list(prompt_token_ids), params, self.tokenizer, prompt)
        inbox: asyncio.Queue = asyncio.Queue()
        self._streams[request_id] = (asyncio.get_running_loop(), inbox)
        self._send(("add", EngineRequest(request_id, state.prompt_token_ids, params,
                                         tenant=tenant, priority=priority, weight=weight,
                                         cache_salt=cache_salt)))
        try:
            while not state.finished:
                batch = [await inbox.get()]
                while not inbox.empty():  # a slow reader gets the steps coalesced
                    batch.append(inbox.get_nowait())
                for item in batch:
                    if isinstance(item, BaseException):
                        raise EngineDeadError("the engine loop failed") from item
                    for eo in item:
                        if state.update(eo):
                            self._send(("stop", request_id, eo.index))
                yield state.snapshot()
        finally:
            self._streams.pop(request_id, None)
            if not state.finished:
                self._send(("abort", request_id))

    async def abort(self, request_id: str) -> None:
        self._send(("abort", request_id))

    def _send(self, command: tuple) -> None:
        self._inbox.put(command)

    def _alive(self) -> bool:
        return self.error is None and self._thread.is_alive()

    def stats(self) -> LoopStats:
        stats = self._stats
        alive = self._thread.is_alive() and self.error is None
        pending = stats.has_pending_work or not self._inbox.empty()
        return dataclasses.replace(stats, is_loop_alive=alive, has_pending_work=pending)

    def shutdown(self, timeout: float = 5.0) -> None:
        """Stop the loop; streams still open end with EngineDeadError."""
        self._stop.set()
        self._inbox.put(("wake",))
        self._thread.join(timeout)
        self._fail_streams(EngineDeadError("the engine was shut down"))

    def _fail_streams(self, error: BaseException) -> None:
        for loop, inbox in list(self._streams.values()):
            loop.call_soon_threadsafe(inbox.put_nowait, error)

    # -- the engine thread ------------------------------------------------------------------
    def _loop(self) -> None:
        try:
            while not self._stop.is_set():
                self._apply_commands(block=not self.core.has_unfinished_requests())
                outputs = self.core.step()
                self._stats = self._snapshot(time.monotonic())
                if outputs:
                    self._dispatch(outputs)
        except BaseException as e:  # the loop must report, never die silently
            log.exception("engine loop failed")
            self.error = e
            self._fail_streams(e)

    def _apply_commands(self, block: bool) -> None:
        try:
            command = self._inbox.get(timeout=0.5) if block else self._inbox.get_nowait()
        except queue.Empty:
            return
        while True:
            self._apply(command)
            try:
                command = self._inbox.get_nowait()
            except queue.Empty:
                return

    def _apply(self, command: tuple) -> None:
        kind = command[0]
        if kind == "add":
            errors = self.core.add_request(command[1])
            if errors:
                self._dispatch(errors)
        elif kind == "abort":
            self.core.abort_request(command[1])
        elif kind == "stop":
            self.core.stop_sequence(command[1], command[2])

    def _dispatch(self, outputs: list[EngineOutput]) -> None:
        grouped: dict[str, list[EngineOutput]] = defaultdict(list)
        for eo in outputs:
            grouped[eo.req_id].append(eo)
        for req_id, items in grouped.items():
            stream = self._streams.get(req_id)
            if stream is not None:
                loop, inbox = stream
                loop.call_soon_threadsafe(inbox.put_nowait, items)

    def _snapshot(self, now: float) -> LoopStats:
        base = self.core.stats()
        return LoopStats(**dataclasses.asdict(base), last_step_time=now,
                         has_pending_work=self.core.has_unfinished_requests())

    def _warmup(self) -> None:
        """One short request through the whole path, so /ready means ready."""
        ids = self.tokenizer.encode("warm up")[:8] or [0]
        params = SamplingParams(max_tokens=2, temperature=0.0)
        self.core.add_request(EngineRequest("__warmup__", ids, params))
        while self.core.has_unfinished_requests():
            self.core.step()


def _default_name(model: str) -> str:
    from cormorant.frontend.default_model import default_model_path

    try:
        if model == default_model_path():
            return DEFAULT_MODEL_NAME
    except FileNotFoundError:
        pass
    import os

    name = os.path.basename(model.rstrip("/"))
    return name[:-5] if name.endswith(".gguf") else name
