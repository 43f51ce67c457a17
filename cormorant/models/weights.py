"""Copy a stream of (Hugging Face tensor name, tensor) pairs into a built model.

Both loaders end here: safetensors yields the checkpoint's own names, GGUF maps its names to
these first. Fused parameters are filled shard by shard through the owning module's
`weight_loader`; afterwards every parameter (and every shard of a fused one) must have been
written, since the model is built uninitialised. KV-cache scales (`k_scale`/`v_scale` in
their checkpoint spellings) go to the attention layer's KVScales (layers.kv_quant); they are
optional (1.0 when absent). Imports: torch.
"""
from __future__ import annotations

import re
from collections.abc import Iterable

import torch
from torch import nn


def load_weights(model: nn.Module, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
    """Load every tensor; raise ValueError on unknown names, shape mismatches or gaps."""
    packed: dict[str, tuple[str, object]] = getattr(model, "packed_modules_mapping", {})
    params = dict(model.named_parameters())  # tied parameters appear once
    loaded: dict[str, set] = {name: set() for name in params}
    unexpected: list[str] = []
    for name, tensor in weights:
        if model.is_ignored_weight(name):
            continue
        if (scales := _kv_scale_targets(name)) is not None:
            if not _load_kv_scales(model, name, tensor, scales):
                unexpected.append(name)
            continue
        target, shard_id = _resolve(name, packed)
        if target not in params:
            unexpected.append(name)
            continue
        module_name, _, param_name = target.rpartition(".")
        module = model.get_submodule(module_name)
        param = params[target]
        try:
            _load_one(module, param, tensor, shard_id)
        except ValueError as exc:
            raise ValueError(f"{name}: {exc}") from None
        loaded[target].add(shard_id)
    if unexpected:
        raise ValueError(f"checkpoint has {len(unexpected)} tensors this model does not use, "
                         f"e.g. {unexpected[:5]}")
    missing = [name for name, shards in loaded.items()
               if shards != _expected_shards(name, packed)]
    if missing:
        raise ValueError(f"checkpoint lacks (parts of) {len(missing)} parameters, "
                         f"e.g. {missing[:5]}")


# Checkpoint spellings of the per-layer KV-cache scales -> which scales they set: FP8
# checkpoints (`k_proj.k_scale`, older ones `kv_scale` for both), compressed-tensors
# (`self_attn.k_scale`) and older llm-compressor output (`k_proj.output_scale`).
_KV_SCALE_NAMES = re.compile(
    r"^(?P<attn>.*\.self_attn)\.(?P<what>k_proj\.k_scale|v_proj\.v_scale|k_scale|v_scale"
    r"|kv_scale|k_proj\.output_scale|v_proj\.output_scale)$")


def _kv_scale_targets(name: str) -> tuple[str, tuple[str, ...]] | None:
    """(attention module name, ("k_scale", "v_scale") or one of them) for a KV-scale tensor."""
    match = _KV_SCALE_NAMES.match(name)
    if match is None:
        return None
    what = match["what"]
    which = (("k_scale", "v_scale") if what == "kv_scale"
             else ("k_scale",) if what.startswith("k") else ("v_scale",))
    return match["attn"], which


def _load_kv_scales(model: nn.Module, name: str, tensor: torch.Tensor,
                    targets: tuple[str, tuple[str, ...]]) -> bool:
    """Set the attention layer's KV scales; False when the model has no such layer."""
    attn, which = targets
    try:
        scales = model.get_submodule(attn + ".kv_scales")
    except AttributeError:
        return False
    for one in which:
        try:
            scales.load_scale(one, tensor)
        except ValueError as exc:
            raise ValueError(f"{name}: {exc}") from None
    return True


def _resolve(name: str, packed: dict[str, tuple[str, object]]) -> tuple[str, object]:
    """Checkpoint name -> (parameter name, shard id or None)."""
    for source, (target, shard_id) in packed.items():
        if f".{source}." in name:
            return name.replace(f".{source}.", f".{target}."), shard_id
    return name, None


def _expected_shards(param_name: str, packed: dict[str, tuple[str, object]]) -> set:
    shards = {shard_id for target, shard_id in packed.values() if f".{target}." in param_name}
    return shards or {None}


def _load_one(module: nn.Module, param: nn.Parameter, tensor: torch.Tensor,
              shard_id: object) -> None:
    loader = getattr(module, "weight_loader", None)
    if loader is not None:
        if shard_id is None:
            loader(param, tensor)
        else:
            loader(param, tensor, shard_id)
        return
    if param.shape != tensor.shape:
        raise ValueError(f"shape {tuple(tensor.shape)} does not match the parameter's "
                         f"{tuple(param.shape)}")
    with torch.no_grad():
        param.copy_(tensor)
