"""Engine-core clients: one protocol, an in-thread and an in-process implementation.

`ThreadCoreClient` runs the EngineCore's step loop in a thread of this process (a laptop, the
CPU); `ProcessCoreClient` runs it in its own process (frontend.engine_process), so that on a
GPU the engine's Python and the HTTP side's never wait on one GIL. Both take typed commands
(engine.messages, applied by the one `apply_command`), warm the core up with
EngineCore.warm_up before they say ready, keep one EngineStats snapshot per step, and deliver
every step's outputs through one callback (`start(on_outputs)`), called from their own
thread with a list of EngineOutputs, or once with an exception when the engine dies.

Liveness (`Liveness`) is the client's own view, never only the engine's last snapshot (which
a step that hangs never replaces): the work it sent and still awaits (pending since when),
and when the engine was last seen advancing: a step finished, or the engine's CPU time grew
(the loop thread's, or the engine process's), i.e. a long step is computing. A step that
hangs (blocked on a lock, a driver call, a stopped process) advances neither. Under tensor
parallelism the engine's CPU time includes its workers' (a step waits on them).
Imports config, engine.messages, frontend.builder and frontend.engine_process.
"""
from __future__ import annotations

import dataclasses
import logging
import os
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
    worker_pids: list[int]  # the engine's tensor-parallel worker processes (none: [])

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


def thread_cpu_time(thread: threading.Thread) -> Callable[[], float | None]:
    """The CPU seconds `thread` has used so far, as a callable (None once it is gone, or where
    the platform cannot tell: then only finished steps count as progress)."""
    try:
        clock = time.pthread_getcpuclockid(thread.ident)  # type: ignore[arg-type]
    except (AttributeError, OSError, TypeError):
        return lambda: None

    def read() -> float | None:
        try:
            return time.clock_gettime(clock)
        except OSError:
            return None
    return read


def process_cpu_time(pid: int) -> float | None:
    """User + system CPU seconds of process `pid`, all its threads (Linux /proc), or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def total_cpu_time(*clocks: Callable[[], float | None]) -> Callable[[], float | None]:
    """The sum of CPU clocks, e.g. an engine loop's and its tensor-parallel workers' (a step
    that waits on its workers computes there); None where none of them can tell."""
    def read() -> float | None:
        values = [value for clock in clocks if (value := clock()) is not None]
        return sum(values) if values else None
    return read


def _pid_clock(pid: int) -> Callable[[], float | None]:
    return lambda: process_cpu_time(pid)


class Liveness:
    """What the client knows of its engine's progress: the samples it sent and still awaits
    (an abort counts until the engine next steps: it has yet to apply it), and when the engine
    last advanced (a step finished, or `cpu_time()` grew since the previous look)."""

    def __init__(self, cpu_time: Callable[[], float | None]) -> None:
        self.cpu_time = cpu_time
        self._lock = threading.Lock()
        self._unfinished: dict[str, set[int]] = {}
        self._aborted: dict[str, float] = {}  # sent at
        self._pending_since: float | None = None
        self._progress_at = time.monotonic()
        self._cpu_seen: float | None = None

    def added(self, request: EngineRequest) -> None:
        with self._lock:
            self._mark_pending()
            self._unfinished[request.req_id] = set(range(request.sampling_params.n))

    def aborted(self, req_id: str) -> None:
        with self._lock:
            if self._unfinished.pop(req_id, None) is not None:
                self._mark_pending()
                self._aborted[req_id] = time.monotonic()
            self._settle()

    def finished(self, req_id: str, index: int) -> None:
        with self._lock:
            self._finish(req_id, index)
            self._settle()

    def stepped(self, outputs: list[EngineOutput], at: float,
                applied: float | None = None) -> None:
        """A step ended at `at` with `outputs`: progress. Aborts sent before `applied` (when
        the step's commands were taken; default `at`) are applied."""
        applied = at if applied is None else applied
        with self._lock:
            self._progress_at = max(self._progress_at, at)
            for eo in outputs:
                if eo.finish_reason is not None:
                    self._finish(eo.req_id, eo.index)
            for req_id, sent in list(self._aborted.items()):
                if sent <= applied:
                    del self._aborted[req_id]
            self._settle()

    def apply(self, stats: EngineStats) -> EngineStats:
        """`stats` (the engine's last snapshot) with the client's pending work and progress."""
        cpu, now = self.cpu_time(), time.monotonic()
        with self._lock:
            if cpu is not None and cpu != self._cpu_seen:
                if self._cpu_seen is not None:
                    self._progress_at = now  # the engine used CPU since the last look
                self._cpu_seen = cpu
            pending = self._pending_since is not None
            progress = max(self._progress_at, self._pending_since or 0.0)
            return dataclasses.replace(stats, has_pending_work=pending,
                                       pending_since=self._pending_since,
                                       last_progress_time=progress)

    def _mark_pending(self) -> None:
        if self._pending_since is None:
            self._pending_since = time.monotonic()

    def _finish(self, req_id: str, index: int) -> None:
        left = self._unfinished.get(req_id)
        if left is not None:
            left.discard(index)
            if not left:
                del self._unfinished[req_id]

    def _settle(self) -> None:
        if not self._unfinished and not self._aborted:
            self._pending_since = None


class _Client:
    """What both clients share: the commands as typed messages, and their liveness."""

    liveness: Liveness

    def add(self, request: EngineRequest) -> None:
        self.liveness.added(request)
        self._send(AddRequest(request))

    def abort(self, req_id: str) -> None:
        self.liveness.aborted(req_id)
        self._send(AbortRequest(req_id))

    def stop(self, req_id: str, index: int) -> None:
        self.liveness.finished(req_id, index)
        self._send(StopSequence(req_id, index))

    def _send(self, command: Command) -> None:
        raise NotImplementedError


class ThreadCoreClient(_Client):
    """The engine core of `built`, stepped by a thread of this process."""

    def __init__(self, built: BuiltEngine, warmup: bool = True) -> None:
        self.core = built.core
        self._built = built
        self.config = built.config
        self.model_config = built.model_config
        self.memory_bytes = built.runner.memory_bytes
        self.worker_pids = built.worker_pids
        if warmup:
            self.core.warm_up()
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._stopping = threading.Event()
        self._stats = self.core.stats()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name="cormorant-engine", daemon=True)
        self.liveness = Liveness(lambda: None)

    def start(self, on_outputs: OnOutputs) -> None:
        self._on_outputs = on_outputs
        self._thread.start()
        self.liveness.cpu_time = total_cpu_time(
            thread_cpu_time(self._thread), *map(_pid_clock, self._built.worker_pids))

    def _send(self, command: Command) -> None:
        self._inbox.put(command)

    def is_alive(self) -> bool:
        return self.error is None and self._thread.is_alive()

    def stats(self) -> EngineStats:
        return self.liveness.apply(dataclasses.replace(self._stats,
                                                       is_loop_alive=self.is_alive()))

    def shutdown(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        self._inbox.put(None)  # wake the loop
        if self._thread.is_alive():
            self._thread.join(timeout)
        self._built.close()

    def _loop(self) -> None:
        try:
            while not self._stopping.is_set():
                self._built.check_alive()  # tensor-parallel workers, idle or not
                errors = self._apply_commands(block=not self.core.has_unfinished_requests())
                applied = time.monotonic()
                outputs = errors + self.core.step()
                now = time.monotonic()
                self._stats = self.core.stats(now)
                self.liveness.stepped(outputs, now, applied)
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
        self.worker_pids = info.worker_pids
        self._stats = EngineStats()
        self.error: BaseException | None = None
        pids = [self._proc.process.pid, *info.worker_pids]
        self.liveness = Liveness(total_cpu_time(*map(_pid_clock, pids)))

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
        return self.liveness.apply(dataclasses.replace(self._stats,
                                                       is_loop_alive=self.is_alive()))

    def shutdown(self, timeout: float = 10.0) -> None:
        self._proc.shutdown(timeout)

    def _on_message(self, message: StepOutputs | EngineFailed) -> None:
        """From the reader thread: a step's outputs (and stats), or the engine's death."""
        if isinstance(message, StepOutputs):
            # Stamped on arrival: this process's clock, not the child's.
            now = time.monotonic()
            self._stats = dataclasses.replace(message.stats, last_step_time=now)
            self.liveness.stepped(message.outputs, now)
            if message.outputs:
                self._on_outputs(message.outputs)
        elif isinstance(message, EngineFailed) and self.error is None:
            self.error = EngineDeadError(message.message)
            self._on_outputs(self.error)
