"""Hugging Face checkpoint directories: config.json -> ModelConfig, and a tensor stream.

Reads config.json (both the transformers v4 `rope_scaling` + `rope_theta` form and the v5
`rope_parameters` form) and generation_config.json, and streams *.safetensors shards tensor
by tensor with safetensors.safe_open so peak host memory stays near one tensor.
Imports: safetensors, torch, config, cormorant.layers.rotary.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterator

import torch
from safetensors import safe_open

from cormorant.config import ModelConfig
from cormorant.layers.rotary import compute_inv_freq, rope_type_of

# Checkpoint families whose config does not spell out what their architecture implies.
_IMPLIED_ATTENTION_BIAS = {"Qwen2ForCausalLM"}
_IMPLIED_QK_NORM = {"Qwen3ForCausalLM"}
# For configs without "architectures".
_ARCHITECTURE_BY_MODEL_TYPE = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
                               "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}


def read_json(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def hf_model_config(model_dir: str) -> ModelConfig:
    cfg = read_json(os.path.join(model_dir, "config.json"))
    gen_path = os.path.join(model_dir, "generation_config.json")
    gen = read_json(gen_path) if os.path.exists(gen_path) else {}
    return model_config_from_hf_dict(cfg, gen)


def model_config_from_hf_dict(cfg: dict, gen: dict | None = None) -> ModelConfig:
    """Translate config.json (+ generation_config.json) into the engine's ModelConfig."""
    _reject_unsupported(cfg)
    architecture = (cfg.get("architectures") or [None])[0] or _ARCHITECTURE_BY_MODEL_TYPE.get(
        cfg.get("model_type"), f"<unknown model_type {cfg.get('model_type')!r}>")
    num_heads = cfg["num_attention_heads"]
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // num_heads
    rope_theta, rope_scaling = _rope(cfg, head_dim)
    gen = gen or {}
    return ModelConfig(
        architecture=architecture,
        vocab_size=cfg["vocab_size"],
        hidden_size=cfg["hidden_size"],
        intermediate_size=cfg["intermediate_size"],
        num_layers=cfg["num_hidden_layers"],
        num_heads=num_heads,
        num_kv_heads=cfg.get("num_key_value_heads") or num_heads,
        head_dim=head_dim,
        max_position_embeddings=_max_positions(cfg),
        rms_norm_eps=cfg.get("rms_norm_eps", 1e-6),
        rope_theta=rope_theta,
        rope_scaling=rope_scaling,
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        attention_bias=architecture in _IMPLIED_ATTENTION_BIAS or bool(cfg.get("attention_bias")),
        qk_norm=architecture in _IMPLIED_QK_NORM,
        bos_token_id=_first_id(cfg.get("bos_token_id"), gen.get("bos_token_id")),
        eos_token_ids=_merge_ids(cfg.get("eos_token_id"), gen.get("eos_token_id")),
    )


def checkpoint_dtype(model_dir: str) -> torch.dtype | None:
    """The dtype config.json says the weights were saved in, if it says."""
    cfg = read_json(os.path.join(model_dir, "config.json"))
    name = cfg.get("dtype") or cfg.get("torch_dtype")
    return getattr(torch, name, None) if isinstance(name, str) else None


def quantization_config(model_dir: str) -> dict | None:
    """config.json's quantization_config (models.quantization reads it), if any."""
    qcfg = read_json(os.path.join(model_dir, "config.json")).get("quantization_config")
    if qcfg is not None and not isinstance(qcfg, dict):
        raise ValueError("config.json's quantization_config must be an object")
    return qcfg or None


def _reject_unsupported(cfg: dict) -> None:
    act = cfg.get("hidden_act", "silu")
    if act != "silu":
        raise ValueError(f"unsupported activation {act!r}: only silu is implemented")
    if cfg.get("mlp_bias"):
        raise ValueError("MLP biases (mlp_bias=true) are not supported")
    rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    if cfg.get("partial_rotary_factor", rope.get("partial_rotary_factor", 1.0)) != 1.0:
        raise ValueError("partial rotary embeddings (partial_rotary_factor) are not supported")


def _max_positions(cfg: dict) -> int:
    """Attention here is always full. A model trained with an active sliding window
    (Mistral 7B v0.1: 4096) only matches that up to the window, so cap the context there."""
    max_positions = cfg.get("max_position_embeddings", 2048)
    window = cfg.get("sliding_window")
    if window and cfg.get("use_sliding_window", True):  # Qwen configs carry a disabled one
        return min(max_positions, window)
    return max_positions


def _rope(cfg: dict, head_dim: int) -> tuple[float, tuple | None]:
    """(rope_theta, rope_scaling as sorted items or None for plain RoPE)."""
    params = dict(cfg.get("rope_parameters") or cfg.get("rope_scaling") or {})
    rope_theta = float(params.pop("rope_theta", cfg.get("rope_theta", 10000.0)))
    if "type" in params and "rope_type" not in params:  # the pre-4.45 spelling
        params["rope_type"] = params.pop("type")
    params.pop("type", None)
    if rope_type_of(params) == "default":
        return rope_theta, None
    compute_inv_freq(head_dim, rope_theta, params)  # raise now on an unsupported type
    return rope_theta, tuple(sorted((k, _freeze(v)) for k, v in params.items()))


def _freeze(value: object) -> object:
    return tuple(value) if isinstance(value, list) else value


def _as_ids(value: object) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in value] if isinstance(value, (list, tuple)) else [int(value)]


def _first_id(*values: object) -> int | None:
    for value in values:
        ids = _as_ids(value)
        if ids:
            return ids[0]
    return None


def _merge_ids(*values: object) -> tuple[int, ...]:
    """Union in first-seen order: generation_config often adds end-of-turn tokens."""
    merged: list[int] = []
    for value in values:
        merged += [i for i in _as_ids(value) if i not in merged]
    return tuple(merged)


def safetensors_files(model_dir: str) -> list[str]:
    """The shards named by model.safetensors.index.json, else every *.safetensors file."""
    index_path = os.path.join(model_dir, "model.safetensors.index.json")
    if os.path.exists(index_path):
        names = sorted(set(read_json(index_path)["weight_map"].values()))
    else:
        names = sorted(n for n in os.listdir(model_dir) if n.endswith(".safetensors"))
    if not names:
        raise ValueError(f"no *.safetensors files in {model_dir} (other weight formats "
                         "such as pytorch_model.bin are deliberately not loaded)")
    return [os.path.join(model_dir, n) for n in names]


def iter_safetensors(model_dir: str) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (name, CPU tensor) one at a time across all shards."""
    for path in safetensors_files(model_dir):
        with safe_open(path, framework="pt", device="cpu") as f:
            for name in f.keys():
                yield name, f.get_tensor(name)
