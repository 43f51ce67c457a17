"""One loaded model version: ServedGenerator (an engine) or ServedEncoder (an encoder).

Both satisfy hosting.pool.Served (memory_bytes, warm, shutdown). Server-only per-model state
(a generator's HTTP admission and token text) is set by the server (server.state), so hosting
never imports the server. `combined_stats` folds the engines of every loaded generator into one.
"""
from __future__ import annotations

import dataclasses
import json
import uuid
from typing import Any

from cormorant import __version__
from cormorant.engine.messages import EngineStats
from cormorant.gateway.telemetry.request_log import Telemetry
from cormorant.hosting.registry import ModelSpec
from cormorant.sampling_params import SamplingParams

VERSION_HEADER = "x-model-version"  # the exact model id (name@version) that answered


def make_fingerprint(model_id: str, digest: str) -> str:
    """Names the model version, its weights digest and the server build; header-safe."""
    text = f"{model_id}:{digest or 'unversioned'}:cormorant-{__version__}"
    return "".join(ch if 0x20 < ord(ch) < 0x7F else "_" for ch in text)


class _Served:
    kind = ""

    def __init__(self, spec: ModelSpec, digest: str) -> None:
        self.spec = spec
        self.model_id = spec.id  # what responses name as their `model`
        self.fingerprint = make_fingerprint(spec.id, digest)
        # Metrics and usage: the version label is the registry's, else the weights digest.
        self.labels = (spec.name, spec.version or digest)
        # Response-cache entries are shared by every load of the same version, weights and
        # settings (replicas sharing a Redis, a reload of unchanged files), and by nothing
        # else: a swap to another version, or a reload of changed files, starts afresh.
        settings = json.dumps([spec.dtype, spec.device, spec.engine], sort_keys=True)
        self.cache_namespace = f"{spec.id}:{digest}:{settings}"

    def headers(self) -> dict[str, str]:
        return {VERSION_HEADER: self.model_id, "x-system-fingerprint": self.fingerprint}


class ServedGenerator(_Served):
    kind = "generate"

    admission: Any = None  # server.request_admission.Admission, set by the server
    token_text: Any = None  # server.logprobs.TokenText, set by the server

    def __init__(self, spec: ModelSpec, engine: Any, digest: str, telemetry: Telemetry) -> None:
        super().__init__(spec, digest)
        self.raw = engine
        self.engine = telemetry.instrument(engine, *self.labels)
        self.tokenizer = engine.tokenizer
        self.max_model_len = engine.max_model_len
        # Token ids the model can take: the logits width, which may exceed the tokenizer's.
        size = getattr(engine.model_config, "vocab_size", None)
        self.vocab_size = int(size) if size else int(engine.tokenizer.vocab_size)
        # The KV block size, for admission's block estimates (engines without one: 16).
        cache = getattr(getattr(engine, "config", None), "cache", None)
        self.block_size = int(getattr(cache, "block_size", 16))

    @property
    def memory_bytes(self) -> int:
        return int(getattr(self.raw, "memory_bytes", 0))

    async def warm(self) -> None:
        """One short greedy generation through the whole stack; raises if it fails."""
        prompt_ids = self.tokenizer.encode("Hello", add_special_tokens=True) or [0]
        params = SamplingParams(max_tokens=1, temperature=0.0)
        async for out in self.engine.generate(f"warmup-{uuid.uuid4().hex}", prompt_ids,
                                              params):
            if out.error:
                raise RuntimeError(out.error)

    def shutdown(self) -> None:
        self.engine.shutdown()


class ServedEncoder(_Served):
    kind = "embed"

    def __init__(self, spec: ModelSpec, encoder: Any, digest: str) -> None:
        super().__init__(spec, digest)
        self.encoder = encoder
        self.max_model_len = encoder.max_model_len

    @property
    def memory_bytes(self) -> int:
        return int(getattr(self.encoder, "memory_bytes", 0))

    async def warm(self) -> None:
        await self.encoder.embed([self.encoder.tokenize("Hello")])

    def shutdown(self) -> None:
        self.encoder.shutdown()


def combined_stats(engines: list[Any]) -> EngineStats:
    """The engines of all loaded generators as one: alive only if every loop is, stalled if
    any engine with work is (the oldest step and progress of those with work pending)."""
    combined = EngineStats()
    stalled_since: list[float] = []
    progress: list[float] = []
    for engine in engines:
        s = engine.stats()
        for f in dataclasses.fields(EngineStats):
            if f.type == "int":
                setattr(combined, f.name, getattr(combined, f.name) + getattr(s, f.name))
        combined.is_loop_alive &= bool(s.is_loop_alive)
        if s.has_pending_work:
            combined.has_pending_work = True
            stalled_since.append(max(s.last_step_time, s.pending_since or 0.0))
            progress.append(s.last_progress_time)
    if stalled_since:
        combined.last_step_time = min(stalled_since)
        combined.last_progress_time = min(progress)
    return combined
