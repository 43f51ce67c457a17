"""What the tensor-parallel executor and its workers say to each other, as msgpack bytes.

Never pickle: every message is a msgpack list `[kind, ...]` of plain data, carried by a
`multiprocessing.connection.Connection` over a socket (`send_bytes` / `recv_bytes`).
executor -> worker: CONFIG (the EngineConfig and eos ids, once), LAUNCH (a ScheduledBatch's
wire form and whether sampling waits), SAMPLE (the grammar rows and bits of the launched step), SHUTDOWN.
worker -> executor: READY (every rank: agreed KV blocks and its bytes held), OUTPUTS (rank 0
only: a step's SampleOutputs), ERROR (any rank, before it exits).
Imports config, engine.types and msgpack.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import msgpack

from cormorant.config import CacheConfig, EngineConfig, SchedulerConfig
from cormorant.engine.types import SampleOutput, ScheduledBatch

CONFIG, LAUNCH, SAMPLE, SHUTDOWN, READY, OUTPUTS, ERROR = (
    "config", "launch", "sample", "shutdown", "ready", "outputs", "error")


def pack(*message: Any) -> bytes:
    return msgpack.packb(list(message), use_bin_type=True)


def unpack(data: bytes) -> list:
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


def config_message(config: EngineConfig, eos_token_ids: tuple[int, ...]) -> bytes:
    return pack(CONFIG, dataclasses.asdict(config), list(eos_token_ids))


def config_from(data: dict) -> EngineConfig:
    return EngineConfig(**{**data, "cache": CacheConfig(**data["cache"]),
                           "scheduler": SchedulerConfig(**data["scheduler"])})


def launch_message(batch: ScheduledBatch, defer_sampling: bool) -> bytes:
    return pack(LAUNCH, batch.to_wire(), defer_sampling)


def batch_from(data: dict) -> ScheduledBatch:
    return ScheduledBatch.from_wire(data)


def outputs_message(outputs: list[SampleOutput]) -> bytes:
    """token id, (chosen logprob, {id: logprob}) or None, prompt logprobs or None, per row."""
    return pack(OUTPUTS, [[o.token_id, o.logprobs, o.prompt_logprobs] for o in outputs])


def outputs_from(rows: list) -> list[SampleOutput]:
    return [SampleOutput(token_id, _logprobs(logprobs),
                         None if prompt is None else [_logprobs(p) for p in prompt])
            for token_id, logprobs, prompt in rows]


def _logprobs(value: list | None) -> tuple[float, dict[int, float]] | None:
    return None if value is None else (value[0], value[1])
