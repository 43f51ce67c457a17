"""EngineReplica: one engine (an AsyncLLM) as a Ray Serve deployment replica.

It tokenizes nothing: the ingress sends prompt ids and SamplingParams (scaleout.wire), the
replica runs them on its engine and streams one msgpack-able dict per step with news. Its
detokenizer and stop strings run here, beside the engine, so the ingress only forwards text.
Ray Serve calls `check_health` (a dead engine loop fails it: the replica is replaced),
`record_routing_stats` (what scaleout.router balances on, and what every ingress's
/metrics shows of it) and `record_autoscaling_stats`
(what scaleout.autoscale scales on); on down-scaling Serve stops sending it requests and
waits up to graceful_shutdown_timeout_s for its streams to finish before `__del__`.
"""
from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from typing import Any

from cormorant.config import EngineConfig
from cormorant.engine.messages import EngineStats, decode, encode
from cormorant.frontend.async_llm import AsyncLLM
from cormorant.scaleout.wire import output_message, read_request

log = logging.getLogger(__name__)


def kv_usage(stats: EngineStats) -> float:
    return 1.0 - stats.num_free_blocks / max(1, stats.num_total_blocks)


def routing_figures(stats: EngineStats) -> dict[str, float]:
    """The engine's own load, as the router and the autoscaler read it."""
    return {"num_running": float(stats.num_running), "num_waiting": float(stats.num_waiting),
            "kv_usage": kv_usage(stats)}


class EngineReplica:
    """The body of the `cormorant-engine` deployment (scaleout.app decorates it)."""

    def __init__(self, engine_config: bytes, model_name: str) -> None:
        config = decode(engine_config)
        if not isinstance(config, EngineConfig):
            raise ValueError("engine_config must be an EngineConfig")
        self.replica_id = _replica_id()
        self.llm = AsyncLLM.from_config(config, model_name)
        log.info("replica %s serves %s", self.replica_id, self.llm.model_name)

    async def generate(self, message: dict[str, Any], prefix_hashes: list[int] | None = None
                       ) -> AsyncIterator[dict[str, Any]]:
        """One request's step messages; prefix_hashes is the router's (unused here).
        Cancelling the stream (the client went away) aborts the request in the engine."""
        request_id, prompt_ids, params, extra = read_request(message)
        # Two ingresses may pick the same id: ours must be unique in this engine.
        engine_id = f"{request_id}@{os.urandom(4).hex()}"
        first = True
        async for out in self.llm.generate(engine_id, prompt_ids, params, **extra):
            out.req_id = request_id
            yield output_message(out, self.replica_id, self.llm.stats(), first)
            first = False

    def stats(self) -> dict[str, Any]:
        return {"replica": self.replica_id, "stats": encode(self.llm.stats())}

    def check_health(self) -> None:
        if not self.llm.client.is_alive():
            raise RuntimeError("the engine loop is not running")

    def record_routing_stats(self) -> dict[str, Any]:
        """The figures the router balances on, and the whole EngineStats encoded: every
        ingress's router gets them from Serve, so each ingress's /metrics lists every replica
        (scaleout.live_view)."""
        stats = self.llm.stats()
        return {"replica": self.replica_id, **routing_figures(stats), "stats": encode(stats)}

    def record_autoscaling_stats(self) -> dict[str, float]:
        return routing_figures(self.llm.stats())

    def __del__(self) -> None:
        llm = getattr(self, "llm", None)
        if llm is not None:
            llm.shutdown()


def _replica_id() -> str:
    try:
        from ray import serve

        return serve.get_replica_context().replica_id.unique_id
    except Exception:  # outside a Serve replica (a unit test): a random id
        return os.urandom(4).hex()

