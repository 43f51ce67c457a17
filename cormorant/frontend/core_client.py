"""Engine-core clients: one protocol, an in-thread and an in-process implementation.

`ThreadCoreClient` runs the EngineCore's step loop in a thread of this process (a laptop, the
CPU); `ProcessCoreClient` runs it in its own process (frontend.engine_process), so that on a
GPU the engine's Python and the HTTP side's never wait on one GIL. Both take typed commands
(engine.messages, applied by the one `apply_command`), warm the core up with
EngineCore.warm_up before they say ready, keep one EngineStats snapshot per step, and deliver
every step's outputs through one callback (`start(on_outputs)`), called from their own
thread with a list of EngineOutputs, or once with an exception when the engine dies.
Imports config, engine.messages, frontend.builder and frontend.engine_process.
"""
from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Protocol

from cormorant.config import EngineConfig, ModelConfig
from cormorant.engine.messages import (AbortRequest, AddRequest, Command, EngineFailed,
                                       EngineStats, StepOutputs, StopSequence, apply_command)
from cormorant.engine.types import EngineOutput, EngineRequest
from cormorant.frontend.builder import BuiltEngine
from cormorant.frontend.engine_process import EngineProcess
from cormorant.models.loader import resolve_device

log = logging.getLogger(__name__)
OnOutputs = Callable[[list[EngineOutput] | BaseException], None]


class EngineDeadError(RuntimeError):
    pass


class EngineCoreClient(Protocol):
    config: EngineConfig  # with max_model_len resolved
    model_config: ModelConfig
    memory_bytes: int  # weights plus KV cache on the engine's device

    def start(self, on_outputs: OnOutputs) -> None: ...
    def add(self, request: EngineRequest) -> None: ...
    def abort(self, req_id: str) -> None: ...
    def stop(self, req_id: str, index: int) -> None: ...
    def stats(self) -> EngineStats: ...
    def is_alive(self) -> bool: ...
    def shutdown(self, timeout: float = 10.0) -> None: ...


def wants_engine_process(device: str, engine_process: bool | None) -> bool:
    """None (the default): the engine core gets its own process on CUDA, where the engine's
    Python and the HTTP side's compete for one GIL under load (B4 on an H100: best rate 32 ->
    64 req/s), and stays a thread on the CPU (one process, less memory: a laptop)."""
    if engine_process is not None:
        return engine_process
    return resolve_device(device).type == "cuda"


class _Client:
    """What both clients share: the commands as typed messages."""

    def add(self, request: EngineRequest) -> None:
        self._send(AddRequest(request))

    def abort(self, req_id: str) -> None:
        self._send(AbortRequest(req_id))

    def stop(self, req_id: str, index: int) -> None:
        self._send(StopSequence(req_id, index))

    def _send(self, command: Command) -> None:
        raise NotImplementedError


class ThreadCoreClient(_Client):
    """The engine core of `built`, stepped by a thread of this process."""

    def __init__(self, built: BuiltEngine, warmup: bool = True) -> None:
        self.core = built.core
        self.config = built.config
        self.model_config = built.model_config
        self.memory_bytes = built.runner.memory_bytes
        if warmup:
            self.core.warm_up()
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._stopping = threading.Event()
        self._stats = self.core.stats()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name="cormorant-engine", daemon=True)

    def start(self, on_outputs: OnOutputs) -> None:
        self._on_outputs = on_outputs
        self._thread.start()

    def _send(self, command: Command) -> None:
        self._inbox.put(command)

    def is_alive(self) -> bool:
        return self.error is None and self._thread.is_alive()

    def stats(self) -> EngineStats:
        stats = self._stats
        pending = stats.has_pending_work or not self._inbox.empty()
        return dataclasses.replace(stats, is_loop_alive=self.is_alive(),
                                   has_pending_work=pending)

    def shutdown(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        self._inbox.put(None)  # wake the loop
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _loop(self) -> None:
        try:
            while not self._stopping.is_set():
                errors = self._apply_commands(block=not self.core.has_unfinished_requests())
                outputs = errors + self.core.step()
                self._stats = self.core.stats(time.monotonic())
                if outputs:
                    self._on_outputs(outputs)
        except BaseException as e:  # the loop must report, never die silently
            log.exception("engine loop failed")
            self.error = e
            self._on_outputs(EngineDeadError("the engine loop failed"))

    def _apply_commands(self, block: bool) -> list[EngineOutput]:
        outputs: list[EngineOutput] = []
        try:
            command = self._inbox.get(timeout=0.5) if block else self._inbox.get_nowait()
            while True:
                if command is not None:
                    outputs += apply_command(self.core, command)
                command = self._inbox.get_nowait()
        except queue.Empty:
            return outputs


class ProcessCoreClient(_Client):
    """The engine core of `config`, built and stepped in a child process."""

    def __init__(self, config: EngineConfig, start_timeout_s: float = 600.0) -> None:
        self._proc = EngineProcess(config, start_timeout_s)
        info = self._proc.info
        self.config = info.config
        self.model_config = info.model_config
        self.memory_bytes = info.memory_bytes
        self._stats = EngineStats()
        self.error: BaseException | None = None

    @property
    def pid(self) -> int:
        return self._proc.process.pid

    def start(self, on_outputs: OnOutputs) -> None:
        self._on_outputs = on_outputs
        self._proc.start(self._on_message)

    def _send(self, command: Command) -> None:
        self._proc.send(command)

    def is_alive(self) -> bool:
        return self.error is None and self._proc.is_alive

    def stats(self) -> EngineStats:
        return dataclasses.replace(self._stats, is_loop_alive=self.is_alive())

    def shutdown(self, timeout: float = 10.0) -> None:
        self._proc.shutdown(timeout)

    def _on_message(self, message: StepOutputs | EngineFailed) -> None:
        """From the reader thread: a step's outputs (and stats), or the engine's death."""
        if isinstance(message, StepOutputs):
            self._stats = message.stats
            if message.outputs:
                self._on_outputs(message.outputs)
        elif isinstance(message, EngineFailed) and self.error is None:
            self.error = EngineDeadError(message.message)
            self._on_outputs(self.error)
