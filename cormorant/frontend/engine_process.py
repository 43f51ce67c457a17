"""The engine core in its own process: the serving process keeps HTTP, tokenization and detokenization, the engine process only schedules and runs steps, so the two never wait on one GIL.

Wire: a multiprocessing Pipe carrying msgpack (never pickle). To the engine: ["add",
request], ["abort", req_id], ["stop", req_id, index], ["shutdown"]. Back: ["ready", info] once
the engine is built and warm, then ["step", outputs, stats] after each step with news (and
at least every second, so liveness is visible), or ["error", message] before the process
dies. The engine is built in the child from an `EngineSpec` naming one of FACTORIES (a fixed
allowlist of module:function strings; nothing is imported from the wire).
Imports config, engine types, sampling_params and msgpack; the engine is built in the child.
"""
from __future__ import annotations

import dataclasses
import importlib
import logging
import multiprocessing
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgpack

from cormorant.config import CacheConfig, EngineConfig, ModelConfig, SchedulerConfig
from cormorant.engine.types import EngineOutput, EngineRequest
from cormorant.sampling_params import SamplingParams

log = logging.getLogger(__name__)

# What an EngineSpec may name; the child imports nothing else.
FACTORIES = {
    "config": "cormorant.frontend.engine_process:build_from_config",
    "serve": "cormorant.server.model_loader:build_for_process",  # + the fair waiting queue
}
HEARTBEAT_S = 1.0
_OUTPUT_FIELDS = [f.name for f in dataclasses.fields(EngineOutput)]


@dataclass
class EngineSpec:
    factory: str  # a key of FACTORIES
    args: dict[str, Any] = field(default_factory=dict)  # msgpack-able
    # The child logs to stderr at the parent's level (a spawned process starts unconfigured).
    log_level: int = field(default_factory=lambda: logging.getLogger().getEffectiveLevel())


# --- codec ------------------------------------------------------------------------------------
def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


def request_to_wire(req: EngineRequest) -> list:
    return [req.req_id, req.prompt_token_ids, dataclasses.asdict(req.sampling_params),
            req.arrival_time, req.tenant, req.priority, req.weight, req.cache_salt]


def request_from_wire(row: list) -> EngineRequest:
    req_id, ids, params, arrival, tenant, priority, weight, cache_salt = row
    return EngineRequest(req_id, ids, SamplingParams(**params), arrival, tenant, priority,
                         weight, cache_salt)


def outputs_to_wire(outputs: list[EngineOutput]) -> list:
    return [[getattr(eo, name) for name in _OUTPUT_FIELDS] for eo in outputs]


def outputs_from_wire(rows: list) -> list[EngineOutput]:
    return [EngineOutput(*row) for row in rows]


def engine_config_to_dict(config: EngineConfig) -> dict:
    return dataclasses.asdict(config)


def engine_config_from_dict(data: dict) -> EngineConfig:
    data = dict(data)
    data["cache"] = CacheConfig(**data["cache"])
    data["scheduler"] = SchedulerConfig(**data["scheduler"])
    return EngineConfig(**data)


def model_config_from_dict(data: dict) -> ModelConfig:
    data = dict(data)
    data["eos_token_ids"] = tuple(data["eos_token_ids"])
    if data.get("rope_scaling") is not None:
        data["rope_scaling"] = tuple(tuple(item) for item in data["rope_scaling"])
    return ModelConfig(**data)


# --- the child ----------------------------------------------------------------------------------
def build_from_config(args: dict):
    """FACTORIES["config"]: frontend.builder.build_engine over an EngineConfig dict."""
    from cormorant.frontend.builder import build_engine

    return build_engine(engine_config_from_dict(args["config"]))


def _child_main(conn, spec: dict) -> None:
    """The engine process: build, warm up, report ready, then loop until told to stop."""
    logging.basicConfig(level=spec.get("log_level", logging.WARNING),
                        format="%(asctime)s %(levelname)s %(name)s [engine]: %(message)s")
    try:
        module, _, name = FACTORIES[spec["factory"]].partition(":")
        built = getattr(importlib.import_module(module), name)(spec["args"])
        core = built.core
        _warm_up(core)
        conn.send_bytes(pack(["ready", {
            "config": engine_config_to_dict(built.config),
            "model_config": dataclasses.asdict(built.model_config),
            "memory_bytes": built.runner.memory_bytes}]))
        _serve(conn, core)
    except BaseException as exc:  # report, then die: the parent fails its streams
        log.exception("engine process failed")
        try:
            conn.send_bytes(pack(["error", f"{type(exc).__name__}: {exc}"]))
        except (OSError, ValueError):
            pass


def _warm_up(core) -> None:
    core.add_request(EngineRequest("__warmup__", [1, 2, 3],
                                   SamplingParams(max_tokens=2, temperature=0.0)))
    while core.has_unfinished_requests():
        core.step()


def _serve(conn, core) -> None:
    last_sent = 0.0
    while True:
        busy = core.has_unfinished_requests()
        if conn.poll(0 if busy else HEARTBEAT_S / 2):
            outputs = []
            while True:
                message = unpack(conn.recv_bytes())
                if message[0] == "shutdown":
                    return
                outputs += _apply(core, message)
                if not conn.poll(0):
                    break
        else:
            outputs = []
        outputs += core.step()
        now = time.monotonic()
        if outputs or now - last_sent >= HEARTBEAT_S:
            conn.send_bytes(pack(["step", outputs_to_wire(outputs), _stats(core, now)]))
            last_sent = now


def _apply(core, message: list) -> list[EngineOutput]:
    kind = message[0]
    if kind == "add":
        return core.add_request(request_from_wire(message[1]))
    if kind == "abort":
        core.abort_request(message[1])
    elif kind == "stop":
        core.stop_sequence(message[1], message[2])
    return []


def _stats(core, now: float) -> dict:
    return {**dataclasses.asdict(core.stats()), "last_step_time": now,
            "has_pending_work": core.has_unfinished_requests()}


# --- the parent's handle -------------------------------------------------------------------------
class EngineProcess:
    """Start the engine process, send it commands, and hand every message it sends to
    `on_message` from a reader thread."""

    def __init__(self, spec: EngineSpec, on_message: Callable[[list], None],
                 start_timeout_s: float = 600.0) -> None:
        ctx = multiprocessing.get_context("spawn")  # CUDA cannot be forked
        self._conn, child_conn = ctx.Pipe(duplex=True)
        self.process = ctx.Process(target=_child_main, args=(child_conn, dataclasses.asdict(spec)),
                                   name="cormorant-engine", daemon=True)
        self.process.start()
        child_conn.close()
        self._send_lock = threading.Lock()
        self.info = self._wait_ready(start_timeout_s)
        self._on_message = on_message
        self.is_alive = True
        self._reader = threading.Thread(target=self._read, name="cormorant-engine-reader",
                                        daemon=True)
        self._reader.start()

    def _wait_ready(self, timeout_s: float) -> dict:
        if not self._conn.poll(timeout_s):
            self.process.kill()
            raise RuntimeError(f"the engine process did not start within {timeout_s:.0f} s")
        try:
            message = unpack(self._conn.recv_bytes())
        except EOFError:
            raise RuntimeError("the engine process exited while starting") from None
        if message[0] != "ready":
            self.process.join(5)
            raise RuntimeError(f"the engine process failed to start: {message[1]}")
        return message[1]

    def send(self, message: list) -> None:
        data = pack(message)
        with self._send_lock:
            try:
                self._conn.send_bytes(data)
            except (OSError, ValueError):
                self.is_alive = False

    def _read(self) -> None:
        try:
            while True:
                self._on_message(unpack(self._conn.recv_bytes()))
        except (EOFError, OSError) as exc:
            if self.is_alive:
                log.error("the engine process went away: %s", exc)
        finally:
            self.is_alive = False
            self._on_message(["error", "the engine process exited"])

    def shutdown(self, timeout_s: float = 10.0) -> None:
        self.send(["shutdown"])
        self.process.join(timeout_s)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)
        self.is_alive = False
        self._conn.close()
