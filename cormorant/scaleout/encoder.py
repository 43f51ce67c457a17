"""Encoders on Ray Serve: EncoderReplica (an Embedder per replica) and RayEncoderClient.

An encoder (`--embedding-model`, a registry's `kind = "embed"` entry) runs as a deployment of
its own, `cormorant-encoder`. The ingress tokenizes (the encoder's tokenizer, loaded as the
Embedder loads it) and checks lengths, so only token ids cross to a replica, which batches
them with its other requests and answers with plain lists (embeddings) or dicts
(classifications). Serve's default router and autoscaling apply: encoders keep no cache a
request could find again.
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any

from cormorant.frontend.embedder import Classification, Embedder, load_encoder_tokenizer
from cormorant.models.bert import encoder_config_from_hf
from cormorant.models.hf_loader import read_json
from cormorant.scaleout.options import ScaleoutOptions

ENCODER_DEPLOYMENT = "cormorant-encoder"


def encoder_deployment_options(options: ScaleoutOptions, name: str = ENCODER_DEPLOYMENT
                               ) -> dict[str, Any]:
    """The scale-out flags as Serve options of an encoder deployment (Serve's autoscaler on
    ongoing requests when min/max replicas are given)."""
    opts: dict[str, Any] = dict(
        name=name, ray_actor_options={"num_gpus": options.num_gpus_per_replica,
                                      "num_cpus": options.num_cpus_per_replica},
        max_ongoing_requests=options.max_ongoing_requests,
        graceful_shutdown_timeout_s=options.graceful_shutdown_timeout_s,
        health_check_period_s=options.health_check_period_s)
    if options.autoscaling:
        low = max(options.min_replicas or 1, 1)
        opts["autoscaling_config"] = {
            "min_replicas": low, "max_replicas": max(options.max_replicas or low, low),
            "target_ongoing_requests": options.target_ongoing_requests}
    else:
        opts["num_replicas"] = options.num_replicas
    return opts


class EncoderReplica:
    """The body of an encoder deployment: one Embedder."""

    def __init__(self, path: str, name: str, dtype: str = "auto", device: str = "auto") -> None:
        self.encoder = Embedder.from_path(path, name=name, dtype=dtype, device=device)

    async def embed(self, seqs: list[list[int]]) -> list[list[float]]:
        return await self.encoder.embed(seqs)

    async def classify(self, seqs: list[list[int]]) -> list[dict[str, Any]]:
        return [dataclasses.asdict(c) for c in await self.encoder.classify(seqs)]

    def __del__(self) -> None:
        encoder = getattr(self, "encoder", None)
        if encoder is not None:
            encoder.shutdown()


class RayEncoderClient:
    """server.embedding_protocol.EncoderLike over a DeploymentHandle of EncoderReplica."""

    def __init__(self, handle: Any, path: str, name: str,
                 on_shutdown: Callable[[], None] | None = None) -> None:
        config = encoder_config_from_hf(read_json(os.path.join(path, "config.json")))
        self.handle = handle
        self.tokenizer = load_encoder_tokenizer(path)
        self.model_name = name
        self.max_model_len = config.max_position_embeddings
        self.vocab_size = config.vocab_size
        self.is_classifier = config.num_labels > 0
        self.num_forward_passes = 0  # the replicas batch; this counts calls sent
        self._on_shutdown = on_shutdown

    def tokenize(self, text: str) -> list[int]:
        """With [CLS] ... [SEP], as the Embedder tokenizes."""
        return self.tokenizer.encode(text, add_special_tokens=True)

    async def embed(self, seqs: list[list[int]]) -> list[list[float]]:
        self.num_forward_passes += 1
        return await self.handle.embed.remote(seqs)

    async def classify(self, seqs: list[list[int]]) -> list[Classification]:
        if not self.is_classifier:
            raise ValueError(f"model {self.model_name!r} has no classification head")
        self.num_forward_passes += 1
        return [Classification(**c) for c in await self.handle.classify.remote(seqs)]

    def shutdown(self) -> None:
        callback, self._on_shutdown = self._on_shutdown, None
        if callback is not None:
            callback()
