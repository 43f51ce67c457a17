"""Building a registry entry's model: a ModelSpec and its resolved source -> an AsyncLLM engine or an Embedder, with the weights digest that names the build.

The model pool calls `load_object` in a worker thread when a model is loaded at start-up, on
demand, or by the admin API. With server.launch, the only server module that names the
engine implementation (frontend), imported lazily because it pulls in torch.
Imports config, gateway.model_registry and gateway.fair_queue; frontend lazily.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from cormorant.config import EngineConfig
from cormorant.engine_args import engine_config_from
from cormorant.gateway.fair_queue import FairQueue
from cormorant.gateway.model_registry import BUILTIN_PREFIX, ModelSpec


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


def source_path(source: Path | str) -> Path:
    if isinstance(source, str) and source.startswith(BUILTIN_PREFIX):
        from cormorant.frontend.default_model import default_model_path

        return Path(default_model_path())
    return Path(source)


def spec_engine_config(spec: ModelSpec, path: Path) -> EngineConfig:
    """The entry's `engine` options (checked against cormorant.engine_args' table when the
    registry was read) with its dtype and device."""
    return engine_config_from(spec.engine, "registry", model=str(path), dtype=spec.dtype,
                              device=spec.device)


def build_for_process(args: dict):
    """frontend.engine_process's "serve" factory: the engine of an EngineConfig dict, with the
    server's waiting queue (weighted fair across tenants, or FIFO), built in the child."""
    from cormorant.frontend.builder import build_engine
    from cormorant.frontend.engine_process import engine_config_from_dict

    waiting = FairQueue() if args.get("scheduling", "fair") == "fair" else None
    return build_engine(engine_config_from_dict(args["config"]), waiting)


def make_engine(config: EngineConfig, name: str | None, fair: bool,
                engine_process: bool | None = None):
    """An engine client for `config`: ProcessLLM (engine core in a child) or AsyncLLM."""
    from cormorant.frontend.process_llm import ProcessLLM, wants_engine_process

    if wants_engine_process(config.device, engine_process):
        return ProcessLLM.from_config(config, model_name=name,
                                      scheduling="fair" if fair else "fifo")
    from cormorant.frontend.async_llm import AsyncLLM

    return AsyncLLM.from_config(config, model_name=name, waiting=FairQueue() if fair else None)


def load_object(spec: ModelSpec, source: Path | str, fair: bool = True,
                engine_process: bool | None = None) -> tuple[Any, str]:
    """(engine or encoder, weights digest) for one registry entry. Blocking."""
    path = source_path(source)
    digest = model_version(path)
    if spec.kind == "embed":
        from cormorant.frontend.embedder import Embedder

        return Embedder.from_path(str(path), name=spec.name, dtype=spec.dtype,
                                  device=spec.device), digest
    return make_engine(spec_engine_config(spec, path), spec.name, fair, engine_process), digest
