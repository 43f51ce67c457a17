"""ProcessLLM: AsyncLLM with its engine core in another process (frontend.engine_process), for serving: the same generate / abort / stats / shutdown, so the server cannot tell the two apart.

Tokenization, detokenization and stop strings stay in this process (AsyncLLM's asyncio side,
unchanged); only EngineRequests go out and EngineOutputs come back, over msgpack. When the
engine process dies, every open stream ends with EngineDeadError and stats() says the loop is
not alive, which /health and the watchdog already act on.
Imports frontend modules, the engine's plain types and models.loader (resolve_device).
"""
from __future__ import annotations

import dataclasses
import time

from cormorant.engine.types import EngineRequest
from cormorant.frontend.async_llm import AsyncLLM, EngineDeadError, LoopStats
from cormorant.frontend.engine_process import (EngineProcess, EngineSpec,
                                               engine_config_from_dict, model_config_from_dict,
                                               outputs_from_wire, request_to_wire)
from cormorant.models.loader import resolve_device
from cormorant.text.tokenizer import Tokenizer


def wants_engine_process(device: str, engine_process: bool | None) -> bool:
    """None (the default): the engine core gets its own process on CUDA, where the engine's
    Python and the HTTP side's compete for one GIL under load (B4 on an H100: best rate 32 ->
    64 req/s), and stays a thread on the CPU (one process, less memory: a laptop)."""
    if engine_process is not None:
        return engine_process
    return resolve_device(device).type == "cuda"


class ProcessLLM(AsyncLLM):
    def __init__(self, spec: EngineSpec, tokenizer: Tokenizer, model_name: str) -> None:
        # No AsyncLLM.__init__: there is no engine in this process to build or warm up.
        self.tokenizer = tokenizer
        self.model_name = model_name
        self._streams = {}
        self.error: BaseException | None = None
        self._stats = LoopStats(0, 0, 0, 0, 0, 0, 0, 0, 0, last_step_time=time.monotonic())
        self._proc = EngineProcess(spec, self._on_message)
        info = self._proc.info
        self.config = engine_config_from_dict(info["config"])
        self.model_config = model_config_from_dict(info["model_config"])
        self._memory_bytes = int(info["memory_bytes"])
        self.is_ready = True

    @classmethod
    def from_config(cls, config, model_name: str | None = None, waiting=None,
                    scheduling: str = "fair") -> "ProcessLLM":
        """The engine of `config` in a child process (`waiting` objects cannot cross a
        process boundary: `scheduling` names the queue instead)."""
        from cormorant.frontend.async_llm import _default_name
        from cormorant.frontend.engine_process import engine_config_to_dict
        from cormorant.text.tokenizer import load_tokenizer

        spec = EngineSpec("serve", {"config": engine_config_to_dict(config),
                                    "scheduling": scheduling})
        return cls(spec, load_tokenizer(config.model), model_name or _default_name(config.model))

    @property
    def memory_bytes(self) -> int:
        return self._memory_bytes

    # -- AsyncLLM's seams -----------------------------------------------------------------------
    def _send(self, command: tuple) -> None:
        if command[0] == "add":
            req: EngineRequest = command[1]
            self._proc.send(["add", request_to_wire(req)])
        else:
            self._proc.send(list(command))

    def _alive(self) -> bool:
        return self.error is None and self._proc.is_alive

    def stats(self) -> LoopStats:
        return dataclasses.replace(self._stats, is_loop_alive=self._alive())

    def shutdown(self, timeout: float = 10.0) -> None:
        self._proc.shutdown(timeout)
        self._fail_streams(EngineDeadError("the engine was shut down"))

    def _on_message(self, message: list) -> None:
        """From the reader thread: a step's outputs (and stats), or the engine's death."""
        if message[0] == "step":
            self._stats = LoopStats(**message[2])
            if message[1]:
                self._dispatch(outputs_from_wire(message[1]))
        elif message[0] == "error" and self.error is None:
            self.error = EngineDeadError(str(message[1]))
            self._fail_streams(self.error)
