"""Int4/int8 weight-only formats: AWQ, GPTQ and compressed-tensors int checkpoints, `--quantization int4|int8`.

Each parser reads config.json's `quantization_config` into an IntSpec (layers.int_linear) and
refuses, naming what is supported, any variant the runtime layout cannot hold:
  awq                  4 bits, GEMM version, zero points, any group dividing the inputs
  gptq                 4 or 8 bits, desc_act true or false, sym or asym, group -1 or dividing
                       the inputs; checkpoint_format gptq (zeros stored minus one) or gptq_v2
  compressed-tensors   weights of type "int", 4 or 8 bits, group or channel strategy, sym or
                       asym, format pack-quantized (or naive-quantized for 8 bits); weight-only
                       (no input_activations), no actorder
  --quantization int4 / int8   symmetric, group 128 (one group per row where 128 does not
                       divide the inputs), quantized at load from dense or random weights
Layers the config leaves out (AWQ/GPTQ `modules_to_not_convert`, compressed-tensors `ignore`)
stay dense; the LM head and embeddings are never linear layers here, so they stay dense too.
Imports: torch, cormorant.layers (linear, int_linear), cormorant.models.quantization.
"""
from __future__ import annotations

import re

from torch import nn

from cormorant.layers.int_linear import IntSpec, IntWeightMethod
from cormorant.layers.linear import LinearBase, LinearMethod, LinearMethodChooser
from cormorant.layers.parallel import tp_rank_and_size
from cormorant.models.quantization import (QuantScheme, checkpoint_names, ignored,
                                           register_checkpoint_format,
                                           register_compressed_tensors, register_online)


def _chooser(spec: IntSpec, ignore: list[str]):
    def chooser(model: nn.Module) -> LinearMethodChooser:
        def choose(name: str, layer: LinearBase) -> LinearMethod | None:
            if ignored(checkpoint_names(model, name), ignore):
                return None
            ref = next(layer.parameters())
            return IntWeightMethod(spec, name, ref.device, ref.dtype)
        return choose
    return chooser


def _int(cfg: dict, key: str, default: int, fmt: str) -> int:
    value = cfg.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{fmt}: {key} must be an integer, got {value!r}")
    return value


def _substrings(modules: list | None) -> list[str]:
    """AWQ/GPTQ's modules_to_not_convert match anywhere in a layer's name."""
    return [f"re:.*{re.escape(str(m))}.*" for m in modules or []]


@register_checkpoint_format("awq")
def _awq(cfg: dict) -> QuantScheme:
    bits = _int(cfg, "bits", _int(cfg, "w_bit", 4, "awq"), "awq")
    group = _int(cfg, "group_size", _int(cfg, "q_group_size", 128, "awq"), "awq")
    version = str(cfg.get("version", "gemm")).lower()
    if bits != 4 or version != "gemm" or not cfg.get("zero_point", True):
        raise ValueError(f"awq: {bits}-bit version {version!r} (zero_point "
                         f"{cfg.get('zero_point', True)}) is not supported; supported: 4-bit "
                         "GEMM with zero points")
    spec = IntSpec("awq", 4, group)
    return QuantScheme(f"awq int4 group {group}",
                       _chooser(spec, _substrings(cfg.get("modules_to_not_convert"))))


@register_checkpoint_format("gptq")
def _gptq(cfg: dict) -> QuantScheme:
    bits = _int(cfg, "bits", 4, "gptq")
    group = _int(cfg, "group_size", 128, "gptq")
    fmt = str(cfg.get("checkpoint_format", "gptq")).lower()
    if bits not in (4, 8) or fmt not in ("gptq", "gptq_v2"):
        raise ValueError(f"gptq: {bits} bits in checkpoint_format {fmt!r} is not supported; "
                         "supported: 4 or 8 bits, checkpoint_format gptq or gptq_v2")
    desc_act = bool(cfg.get("desc_act", False))
    if desc_act and tp_rank_and_size()[1] > 1:
        raise ValueError("gptq: desc_act checkpoints are not supported with tensor "
                         "parallelism")
    spec = IntSpec("gptq", bits, group, symmetric=bool(cfg.get("sym", True)),
                   zero_offset=1 if fmt == "gptq" else 0)
    act = ", desc_act" if desc_act else ""
    return QuantScheme(f"gptq int{bits} group {group}{act}",
                       _chooser(spec, _substrings(cfg.get("modules_to_not_convert"))))


@register_compressed_tensors("int")
def _compressed_int(cfg: dict, group: dict) -> QuantScheme:
    weights = group.get("weights") or {}
    fmt = group.get("format") or cfg.get("format") or "pack-quantized"
    bits = _int(weights, "num_bits", 8, "compressed-tensors")
    strategy = weights.get("strategy", "group")
    problems = []
    if group.get("input_activations"):
        problems.append("input_activations (only weight-only W4A16/W8A16 is)")
    if fmt not in ("pack-quantized", "naive-quantized") or bits not in (4, 8):
        problems.append(f"format {fmt!r} with {bits} bits")
    if fmt == "naive-quantized" and bits != 8:
        problems.append("naive-quantized below 8 bits")
    if strategy not in ("group", "channel"):
        problems.append(f"strategy {strategy!r}")
    if weights.get("actorder"):
        problems.append(f"actorder {weights.get('actorder')!r}")
    if weights.get("dynamic"):
        problems.append("dynamic weight scales")
    if problems:
        raise ValueError(f"compressed-tensors int weights: {'; '.join(problems)} not "
                         "supported; supported: 4/8-bit pack-quantized or 8-bit "
                         "naive-quantized, group or channel strategy, sym or asym, weight-only")
    size = -1 if strategy == "channel" else _int(weights, "group_size", 128, "compressed-tensors")
    layout = "ct-packed" if fmt == "pack-quantized" else "ct-naive"
    spec = IntSpec(layout, bits, size, symmetric=bool(weights.get("symmetric", True)))
    return QuantScheme(f"compressed-tensors int{bits} {strategy} ({fmt})",
                       _chooser(spec, list(cfg.get("ignore") or [])))


def _online(bits: int) -> QuantScheme:
    spec = IntSpec("online", bits, 128)
    return QuantScheme(f"int{bits} (quantized at load, group 128)", _chooser(spec, []),
                       quantizes_dense=True)


@register_online("int4")
def _online_int4() -> QuantScheme:
    return _online(4)


@register_online("int8")
def _online_int8() -> QuantScheme:
    return _online(8)
