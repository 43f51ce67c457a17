"""Named model configurations for the benchmarks: config.json dictionaries and directories.

One dictionary feeds both sides: cormorant, through `config_dir(name)` (a directory holding
that config.json and nothing else, so EngineConfig(model=config_dir(name),
load_format="random") builds the engine a real checkpoint would give, on random weights),
and the transformers peer's AutoConfig. The `tiny-*` entries are for the CPU smoke tests.
Imports config and models.hf_loader only.
"""
from __future__ import annotations

import copy
import json
import os
import tempfile
from pathlib import Path

from cormorant.config import ModelConfig
from cormorant.models.hf_loader import model_config_from_hf_dict

# Qwen/Qwen3-0.6B config.json (the fields that shape compute and memory).
QWEN3_0_6B = {
    "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3",
    "vocab_size": 151936, "hidden_size": 1024, "intermediate_size": 3072,
    "num_hidden_layers": 28, "num_attention_heads": 16, "num_key_value_heads": 8,
    "head_dim": 128, "max_position_embeddings": 40960, "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0, "tie_word_embeddings": True, "attention_bias": False,
    "hidden_act": "silu", "bos_token_id": 151643, "eos_token_id": 151645,
}

# meta-llama/Llama-3.1-8B config.json.
LLAMA_3_1_8B = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama",
    "vocab_size": 128256, "hidden_size": 4096, "intermediate_size": 14336,
    "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
    "head_dim": 128, "max_position_embeddings": 131072, "rms_norm_eps": 1e-5,
    "rope_theta": 500000.0, "tie_word_embeddings": False, "attention_bias": False,
    "mlp_bias": False, "hidden_act": "silu", "bos_token_id": 128000, "eos_token_id": 128001,
    "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                     "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
}

# CPU smoke-test stand-ins: same families, a few MB. Vocab above 10000 because the B1 workload
# draws its prompt tokens from [0, 10000].
_TINY_SHAPE = {"vocab_size": 10240, "hidden_size": 64, "intermediate_size": 128,
               "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
               "head_dim": 16, "bos_token_id": 1, "eos_token_id": 2}
TINY_QWEN3 = {**QWEN3_0_6B, **_TINY_SHAPE, "max_position_embeddings": 4096}
TINY_LLAMA = {**LLAMA_3_1_8B, **_TINY_SHAPE, "max_position_embeddings": 16384}

CONFIGS: dict[str, dict] = {
    "qwen3-0.6b": QWEN3_0_6B,
    "llama-3.1-8b": LLAMA_3_1_8B,
    "tiny-qwen3": TINY_QWEN3,
    "tiny-llama": TINY_LLAMA,
}
# What a `--tiny` run substitutes for each real configuration.
TINY_STAND_IN = {"qwen3-0.6b": "tiny-qwen3", "llama-3.1-8b": "tiny-llama"}


def hf_config_dict(name: str) -> dict:
    """A fresh copy (callers may mutate it, e.g. transformers pops keys)."""
    try:
        return copy.deepcopy(CONFIGS[name])
    except KeyError:
        raise ValueError(f"unknown benchmark model configuration {name!r}; "
                         f"known: {', '.join(sorted(CONFIGS))}") from None


def config_dir(name: str) -> Path:
    """A directory holding configuration `name`'s config.json, written once per user cache
    (rewritten when the dictionary above changes; atomically, since the benchmark's
    subprocesses may ask at the same time)."""
    text = json.dumps(hf_config_dict(name), indent=1, sort_keys=True) + "\n"
    directory = _cache_root() / name
    path = directory / "config.json"
    if not (path.is_file() and path.read_text(encoding="utf-8") == text):
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".config-", suffix=".json")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    return directory


def _cache_root() -> Path:
    """The user's cache ($XDG_CACHE_HOME or ~/.cache), else (read-only home) the temp dir."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    for root in (Path(base) / "cormorant" / "bench-configs",
                 Path(tempfile.gettempdir()) / f"cormorant-bench-configs-{os.getuid()}"):
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        if os.access(root, os.W_OK):
            return root
    raise OSError("no writable cache directory for the benchmark configurations")


def model_config(name: str) -> ModelConfig:
    return model_config_from_hf_dict(hf_config_dict(name))


def resolve_name(name: str, tiny: bool) -> str:
    return TINY_STAND_IN.get(name, name) if tiny else name
