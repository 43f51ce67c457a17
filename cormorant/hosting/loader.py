"""Building a registry entry's model: an AsyncLLM engine or an Embedder, and its weights digest.

The model pool calls `load_object` in a worker thread when a model is loaded at start-up, on
demand, or by the admin API; `cormorant serve` without a registry builds through it too. The
only module that names the engine implementation (frontend), imported lazily: it pulls in torch.
"""
from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any

from cormorant.config import EngineConfig
from cormorant.engine_args import engine_config_from
from cormorant.hosting.registry import BUILTIN_PREFIX, ModelSpec


def model_version(path: str | Path) -> str:
    """A short digest of the model's identity: file names, sizes and modification times plus
    the config files (or a GGUF's header), cheap to compute even for large weights. Files
    rewritten in place (new weights, same shapes) change it through their mtime."""
    digest = hashlib.sha256()
    root = Path(path)
    files = sorted(f for f in root.iterdir() if f.is_file()) if root.is_dir() else [root]
    for f in files:
        stat = f.stat()
        digest.update(f"{f.name}:{stat.st_size}:{stat.st_mtime_ns};".encode())
        if f.suffix in (".json", ".gguf"):
            with open(f, "rb") as fh:
                digest.update(fh.read(1 << 20))
    return digest.hexdigest()[:12]


def source_path(source: Path | str | None) -> Path:
    """A resolved source's path; a builtin (or no source) is the embedded default model."""
    if source is None or isinstance(source, str) and source.startswith(BUILTIN_PREFIX):
        from cormorant.frontend.default_model import default_model_path

        return Path(default_model_path())
    return Path(source)


def spec_engine_config(spec: ModelSpec, path: Path) -> EngineConfig:
    """The entry's `engine` options (checked against cormorant.engine_args' table when the
    registry was read) with its dtype and device."""
    return engine_config_from(spec.engine, "registry", model=str(path), dtype=spec.dtype,
                              device=spec.device)


def make_engine(config: EngineConfig, name: str | None, engine_process: bool | None = None):
    """An AsyncLLM for `config`, its engine core in a child process or a thread
    (engine_process; None: a process on CUDA)."""
    from cormorant.frontend.async_llm import AsyncLLM

    return AsyncLLM.from_config(config, model_name=name, engine_process=engine_process)


def make_encoder(path: Path | str, name: str | None, dtype: str, device: str):
    """An Embedder (embeddings and classification) for the encoder model at `path`."""
    from cormorant.frontend.embedder import Embedder

    return Embedder.from_path(str(path), name=name, dtype=dtype, device=device)


def load_object(spec: ModelSpec, source: Path | str, policy: str = "fair",
                engine_process: bool | None = None) -> tuple[Any, str]:
    """(engine or encoder, weights digest) for one registry entry. Blocking. policy: the
    server's waiting-queue order (SchedulerConfig.policy) for every model it serves."""
    path = source_path(source)
    digest = model_version(path)
    if spec.kind == "embed":
        return make_encoder(path, spec.name, spec.dtype, spec.device), digest
    return make_engine(generator_config(spec, path, policy), spec.name, engine_process), digest


def generator_config(spec: ModelSpec, path: Path, policy: str = "fair") -> EngineConfig:
    """The EngineConfig of a generation entry, with the server's waiting-queue order."""
    config = spec_engine_config(spec, path)
    return dataclasses.replace(config,
                               scheduler=dataclasses.replace(config.scheduler, policy=policy))
