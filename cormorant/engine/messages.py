"""Typed messages that cross the engine boundary, their one msgpack codec, and EngineStats.

Commands to an engine core: AddRequest, AbortRequest, StopSequence, Shutdown (applied by
`apply_command`, the one dispatch used by the in-thread and the in-process client). News from
it: EngineReady (once, built and warm), StepOutputs (a step's outputs and the stats after it),
EngineFailed (before it dies). `encode` / `decode` carry any of them, and every dataclass they
hold, as msgpack (never pickle): a dataclass travels as its registered name and its fields in
order, so a new field (EngineRequest.cache_salt, say) travels without codec changes; only the
types registered here can be rebuilt from the wire. Imports config, sampling_params, engine.types.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any

import msgpack

from cormorant.config import CacheConfig, EngineConfig, ModelConfig, SchedulerConfig
# BATCH_PRIORITY (the background class) is re-exported: the server's one seam into the engine.
from cormorant.engine.types import BATCH_PRIORITY, EngineOutput, EngineRequest  # noqa: F401
from cormorant.sampling_params import SamplingParams, StructuredOutputs


@dataclass
class EngineStats:
    """The engine's state as every consumer reads it (admission, /health, the watchdog,
    metrics): the core's counters, plus the loop's liveness as its client sees it."""
    num_running: int = 0
    num_waiting: int = 0
    num_waiting_prompt_tokens: int = 0
    num_free_blocks: int = 0
    num_total_blocks: int = 0
    steps: int = 0
    num_preemptions: int = 0
    prefix_cache_queries: int = 0  # prompt tokens looked up in the prefix cache
    prefix_cache_hits: int = 0  # of those, tokens served from it
    last_step_time: float = field(default_factory=time.monotonic)  # of the loop's last step
    is_loop_alive: bool = True
    has_pending_work: bool = False
    # Liveness as the client sees it (frontend.core_client), all time.monotonic():
    # when the oldest work still pending arrived (None: nothing pending), and when the engine
    # was last seen advancing: a step finished or its CPU time grew (a step computing).
    pending_since: float | None = None
    last_progress_time: float = field(default_factory=time.monotonic)


# --- commands ---------------------------------------------------------------------------------
@dataclass
class AddRequest:
    request: EngineRequest


@dataclass
class AbortRequest:
    req_id: str


@dataclass
class StopSequence:
    """Finish one sample early (the frontend matched a stop string in its text)."""
    req_id: str
    index: int


@dataclass
class Shutdown:
    pass


# --- news -------------------------------------------------------------------------------------
@dataclass
class EngineReady:
    config: EngineConfig  # with max_model_len resolved
    model_config: ModelConfig
    memory_bytes: int
    worker_pids: list[int] = field(default_factory=list)  # tensor-parallel workers


@dataclass
class StepOutputs:
    outputs: list[EngineOutput]
    stats: EngineStats


@dataclass
class EngineFailed:
    message: str


Command = AddRequest | AbortRequest | StopSequence | Shutdown


def apply_command(core: Any, command: Command) -> list[EngineOutput]:
    """Apply one command to an EngineCore; returns error outputs of a rejected request."""
    if isinstance(command, AddRequest):
        return core.add_request(command.request)
    if isinstance(command, AbortRequest):
        core.abort_request(command.req_id)
    elif isinstance(command, StopSequence):
        core.stop_sequence(command.req_id, command.index)
    return []


# --- the codec ----------------------------------------------------------------------------------
_TYPES: dict[str, type] = {cls.__name__: cls for cls in (
    EngineStats, AddRequest, AbortRequest, StopSequence, Shutdown, EngineReady, StepOutputs,
    EngineFailed, EngineRequest, EngineOutput, SamplingParams, StructuredOutputs, EngineConfig,
    CacheConfig, SchedulerConfig, ModelConfig)}
_FIELDS: dict[type, tuple[str, ...]] = {
    cls: tuple(f.name for f in dataclasses.fields(cls) if f.init) for cls in _TYPES.values()}
_DATACLASS, _TUPLE = 1, 2


def _default(obj: Any) -> msgpack.ExtType:
    cls = type(obj)
    names = _FIELDS.get(cls)
    if names is not None:
        row = [cls.__name__, *(getattr(obj, name) for name in names)]
        return msgpack.ExtType(_DATACLASS, _pack(row))
    if cls is tuple:
        return msgpack.ExtType(_TUPLE, _pack(list(obj)))
    raise TypeError(f"cannot send a {cls.__name__} across the engine boundary")


def _ext_hook(code: int, data: bytes) -> Any:
    value = _unpack(data)
    if code == _TUPLE:
        return tuple(value)
    if code == _DATACLASS:
        name, *values = value
        cls = _TYPES.get(name)
        if cls is None:
            raise ValueError(f"unknown message type {name!r}")
        return cls(*values)
    return msgpack.ExtType(code, data)


def _pack(obj: Any) -> bytes:
    # strict_types: tuples reach _default (and come back as tuples), not as lists.
    return msgpack.packb(obj, use_bin_type=True, strict_types=True, default=_default)


def _unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=False, ext_hook=_ext_hook)


def encode(message: Any) -> bytes:
    """One message (or any value made of registered dataclasses and plain data) as bytes."""
    return _pack(message)


def decode(data: bytes) -> Any:
    return _unpack(data)
