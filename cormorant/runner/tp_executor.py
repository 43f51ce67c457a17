"""TensorParallelExecutor: one engine over N devices, a worker process per device.

It presents ModelRunner's interface to EngineCore (num_blocks, is_asynchronous, execute,
launch / sample / collect, memory_bytes, device), so the engine's loop does not know it runs
on several devices. The engine process keeps scheduling (it is the one that holds the
sequences); it holds no model and joins no collective. Each step's ScheduledBatch goes as
msgpack bytes (runner.tp_wire, never pickle) down a socket to every worker
(runner.tp_worker), every rank runs the same forward on its shards, and rank 0 answers the
sampled ids (every rank samples them alike: see runner.tp_worker for why).

Supervision: the executor waits on every worker's socket at once, so a worker that dies
(its socket reads EOF) or fails (it sends ERROR) ends the step with TensorParallelError at
once, never a hang: the remaining workers, who may be blocked in a collective, are killed and
reaped, and the engine loop's error reaches every request (frontend.core_client); between
steps the loop asks `check_alive`, so a worker that dies while idle is seen as well. Workers
also exit on their own when this process is gone (runner.tp_worker), and every collective
has a timeout. Start-up fails with a clear message when N does not fit the model (heads,
kv heads, vocabulary, MLP width) or the machine (more ranks than CUDA devices).
Imports torch, config, engine.types and this package.
"""
from __future__ import annotations

import atexit
import datetime
import logging
import os
import socket
import subprocess
import sys
import weakref
from multiprocessing.connection import Connection, wait

import torch
import torch.distributed as dist

from cormorant.config import EngineConfig, ModelConfig
from cormorant.engine.types import MaskBits, SampleOutput, ScheduledBatch
from cormorant.runner.tp_wire import (ERROR, OUTPUTS, READY, SAMPLE, SHUTDOWN, config_message,
                                      launch_message, outputs_from, pack, unpack)

log = logging.getLogger(__name__)


class TensorParallelError(RuntimeError):
    """A tensor-parallel worker died or failed: the engine cannot go on."""


def check_tensor_parallel(model_config: ModelConfig, size: int, device: torch.device) -> None:
    """ValueError naming what does not fit, before any worker starts."""
    if size < 1:
        raise ValueError(f"tensor_parallel_size must be at least 1, got {size}")
    cfg = model_config
    checks = [("attention heads", cfg.num_heads), ("vocabulary size", cfg.vocab_size),
              ("intermediate size", cfg.intermediate_size)]
    for what, value in checks:
        if value % size:
            raise ValueError(f"tensor_parallel_size {size} does not divide the model's "
                             f"{what} ({value})")
    if cfg.num_kv_heads % size and size % cfg.num_kv_heads:
        raise ValueError(f"tensor_parallel_size {size} neither divides nor is a multiple of "
                         f"the model's {cfg.num_kv_heads} kv heads")
    if device.type == "cuda":
        first = device.index or 0
        available = torch.cuda.device_count() - first
        if size > available:
            raise ValueError(f"tensor_parallel_size {size} exceeds the {available} CUDA "
                             f"devices from cuda:{first} on")


class TensorParallelExecutor:
    def __init__(self, config: EngineConfig, model_config: ModelConfig,
                 eos_token_ids: tuple[int, ...], device: torch.device,
                 start_timeout_s: float = 600.0) -> None:
        """config: with lengths resolved (frontend.builder); starts and waits for the
        workers; raises TensorParallelError (or ValueError) if they cannot start."""
        self.world_size = config.tensor_parallel_size
        check_tensor_parallel(model_config, self.world_size, device)
        if config.quantization == "gguf":
            raise ValueError("quantization 'gguf' (blocks kept on the CPU) runs with "
                             "tensor_parallel_size 1 only")
        self.device = device
        self.is_asynchronous = device.type == "cuda"
        self.procs: list[subprocess.Popen] = []
        self._conns: list[Connection] = []
        self._error: TensorParallelError | None = None
        self._closed = False
        # The rendezvous: workers join through this store (no port race, nothing on disk).
        self._store = dist.TCPStore("127.0.0.1", 0, self.world_size + 1, is_master=True,
                                    wait_for_workers=False,
                                    timeout=datetime.timedelta(seconds=start_timeout_s))
        atexit.register(_close_at_exit, weakref.ref(self))
        try:
            self._start(config, eos_token_ids, start_timeout_s)
        except BaseException:
            self.close()
            raise

    def _start(self, config: EngineConfig, eos_token_ids: tuple[int, ...],
               timeout_s: float) -> None:
        level = logging.getLogger().getEffectiveLevel()
        for rank in range(self.world_size):
            ours, theirs = socket.socketpair()
            try:
                self.procs.append(subprocess.Popen(
                    [sys.executable, "-m", "cormorant.runner.tp_worker",
                     "--fd", str(theirs.fileno()), "--rank", str(rank),
                     "--world-size", str(self.world_size), "--store-port",
                     str(self._store.port), "--parent-pid", str(os.getpid()),
                     "--log-level", str(level)], pass_fds=(theirs.fileno(),)))
            finally:
                theirs.close()
            self._conns.append(Connection(ours.detach()))
        message = config_message(config, eos_token_ids)
        for conn in self._conns:
            conn.send_bytes(message)
        ready = self._receive(set(range(self.world_size)), READY, timeout_s)
        self.num_blocks = min(r[1] for r in ready.values())
        self.memory_bytes = sum(r[2] for r in ready.values())  # over all devices
        log.info("tensor parallel: %d workers ready (pids %s), %d KV blocks each",
                 self.world_size, [p.pid for p in self.procs], self.num_blocks)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    # -- steps (the Runner protocol of engine.core) -----------------------------------------
    def execute(self, batch: ScheduledBatch) -> list[SampleOutput]:
        return self.collect(self.launch(batch))

    def launch(self, batch: ScheduledBatch, defer_sampling: bool = False) -> int:
        self._broadcast(launch_message(batch, defer_sampling))
        return len(batch)

    def sample(self, handle: int, mask_rows: list[int], mask_bits: MaskBits) -> None:
        self._broadcast(pack(SAMPLE, mask_rows, mask_bits))

    def collect(self, handle: int) -> list[SampleOutput]:
        """Rank 0's outputs of the oldest launched step (workers answer in order)."""
        return outputs_from(self._receive({0}, OUTPUTS, None)[0][1])

    def check_alive(self) -> None:
        """TensorParallelError if a worker has exited: the engine loop asks between steps, so
        a death while idle is seen too (not only by the next step)."""
        self._check()
        for rank, proc in enumerate(self.procs):
            if proc.poll() is not None:
                self._fail(f"tensor-parallel worker {rank} exited ({self._exit_status(rank)})")

    def _broadcast(self, data: bytes) -> None:
        self._check()
        for rank, conn in enumerate(self._conns):
            try:
                conn.send_bytes(data)
            except OSError:
                self._fail(f"tensor-parallel worker {rank} is gone "
                           f"({self._exit_status(rank)})")

    def _receive(self, ranks: set[int], kind: str, timeout_s: float | None) -> dict[int, list]:
        """The next `kind` message of each of `ranks`; any other rank that speaks (ERROR) or
        closes its socket (it died) fails the engine, as does the timeout."""
        self._check()
        got: dict[int, list] = {}
        while len(got) < len(ranks):
            readable = wait(self._conns, timeout_s)
            if not readable:
                self._fail(f"tensor-parallel workers did not answer within {timeout_s:.0f} s")
            for conn in readable:
                rank = self._conns.index(conn)
                try:
                    message = unpack(conn.recv_bytes())
                except (EOFError, OSError):
                    self._fail(f"tensor-parallel worker {rank} exited "
                               f"({self._exit_status(rank)})")
                if message[0] == ERROR:
                    self._fail(f"tensor-parallel worker {rank} failed: {message[1]}")
                if message[0] != kind or rank not in ranks or rank in got:
                    self._fail(f"tensor-parallel worker {rank} sent {message[0]!r} "
                               f"out of turn")
                got[rank] = message
        return got

    def _exit_status(self, rank: int) -> str:
        try:
            code = self.procs[rank].wait(1.0)
        except subprocess.TimeoutExpired:
            return "still running"
        return f"killed by signal {-code}" if code < 0 else f"exit code {code}"

    def _check(self) -> None:
        if self._error is not None:
            raise self._error
        if self._closed:
            raise TensorParallelError("the tensor-parallel workers were shut down")

    def _fail(self, message: str) -> None:
        log.error("%s; stopping every worker", message)
        self._error = TensorParallelError(message)
        self._stop_workers(kill=True)
        raise self._error

    # -- shutdown ---------------------------------------------------------------------------
    def close(self, timeout_s: float = 10.0) -> None:
        """Ask every worker to stop, wait (kill after `timeout_s`), reap them."""
        if self._closed:
            return
        self._closed = True
        self._stop_workers(kill=self._error is not None, timeout_s=timeout_s)
        self._store = None  # the rendezvous server's thread goes with it

    def _stop_workers(self, kill: bool, timeout_s: float = 10.0) -> None:
        for conn in self._conns:
            try:
                if not kill:
                    conn.send_bytes(pack(SHUTDOWN))
            except OSError:
                pass
        for proc in self.procs:
            if kill and proc.poll() is None:
                proc.kill()
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("tensor-parallel worker %d did not stop; killing it", proc.pid)
                proc.kill()
                proc.wait()
        for conn in self._conns:
            conn.close()
        self._conns = []


def _close_at_exit(ref: weakref.ref) -> None:
    executor = ref()
    if executor is not None:
        executor.close(timeout_s=2.0)
