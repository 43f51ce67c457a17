"""Tiny int4/int8 checkpoints written at test time in each format's exact on-disk layout.

`write_int_checkpoint(src, dst, fmt, **options)` reads a tiny dense fp32 checkpoint (tests/
tiny.py) and writes two: `dst` with every decoder projection quantized in format `fmt` (and
config.json's `quantization_config`), and `dst`-dequantized: the same model with the
dequantized weights, dense, which is what the quantized model must compute.

Who writes and who dequantizes, per format (none of it is cormorant's code):
- compressed-tensors (pack-quantized, naive-quantized): the `compressed-tensors` library's own
  qparams, compressors and decompressors.
- AWQ: quantized and packed here, following AutoAWQ's pseudo_quantize_tensor and
  WQLinear_GEMM.from_linear pack loop (order [0, 2, 4, 6, 1, 3, 5, 7]); dequantized by
  compressed-tensors' AutoAWQ converter (AWQ -> compressed-tensors) and its decompressor.
- GPTQ: quantized here following GPTQ's Quantizer.find_params (sym / asym, act-order g_idx),
  codes and zeros packed by compressed-tensors' pack_to_int32 (its sequential int32 packing is
  GPTQ's), zeros stored minus one (v1) or as they are (v2); dequantized by GPTQ's reference
  formula (scales[g_idx] * (q - zeros[g_idx])), written here: no GPTQ library installs on a CPU.
Scales are stored in fp16 as real checkpoints store them; the dequantized weights use exactly
the stored scales.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from compressed_tensors.compressors.naive_quantized.base import NaiveQuantizationCompressor
from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor
from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32
from compressed_tensors.entrypoints.convert.converters.autoawq import AutoAWQConverter
from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
from compressed_tensors.quantization.utils.helpers import calculate_qparams
from safetensors.torch import load_file, save_file

PROJECTIONS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
               "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
AWQ_PACK_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)


def _fp16(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.float16).float()


# -- compressed-tensors: the library does everything ------------------------------------------
def _ct_args(bits: int, group: int | None, sym: bool) -> QuantizationArgs:
    if group is None:
        return QuantizationArgs(num_bits=bits, type="int", symmetric=sym, strategy="channel")
    return QuantizationArgs(num_bits=bits, type="int", symmetric=sym, strategy="group",
                            group_size=group)


def ct_quantize(w: torch.Tensor, fmt: str, bits: int, group: int | None, sym: bool):
    args = _ct_args(bits, group, sym)
    n, k = w.shape
    grouped = w.reshape(n, -1, group or k)
    scale, zero = calculate_qparams(grouped.amin(-1), grouped.amax(-1), args)
    scale = _fp16(scale)
    scheme = QuantizationScheme(targets=["Linear"], weights=args)
    compressor = (PackedQuantizationCompressor if fmt == "pack-quantized"
                  else NaiveQuantizationCompressor)
    parts = compressor.compress({"weight": w, "weight_scale": scale, "weight_zero_point": zero},
                                scheme)
    dense = compressor.decompress(dict(parts), scheme)["weight"].float()
    parts["weight_scale"] = parts["weight_scale"].to(torch.float16)
    return parts, dense


def ct_config(fmt: str, bits: int, group: int | None, sym: bool) -> dict:
    weights = _ct_args(bits, group, sym).model_dump(mode="json", exclude_none=True)
    return {"quant_method": "compressed-tensors", "format": fmt, "ignore": ["lm_head"],
            "quantization_status": "compressed",
            "config_groups": {"group_0": {"targets": ["Linear"], "weights": weights,
                                          "format": fmt}}}


# -- AWQ ---------------------------------------------------------------------------------------
def _to_int32(words: torch.Tensor) -> torch.Tensor:
    return torch.where(words >= 2 ** 31, words - 2 ** 32, words).to(torch.int32)


def _awq_pack(intweight: torch.Tensor) -> torch.Tensor:
    """AutoAWQ's loop: word col, nibble i holds column col * 8 + order[i] ([rows, N/8])."""
    words = torch.zeros(intweight.shape[0], intweight.shape[1] // 8, dtype=torch.int64)
    for i, column in enumerate(AWQ_PACK_ORDER):
        words |= intweight[:, column::8].to(torch.int64) << (4 * i)
    return _to_int32(words)


def awq_quantize(w: torch.Tensor, group: int):
    n, k = w.shape
    grouped = w.reshape(n, k // group, group)  # AutoAWQ: [-1, group] rows of W [N, K]
    max_val, min_val = grouped.amax(-1), grouped.amin(-1)
    scales = _fp16((max_val - min_val).clamp(min=1e-5) / 15)
    zeros = (-torch.round(min_val / scales)).clamp(0, 15)
    q = torch.clamp(torch.round(grouped / scales[..., None]) + zeros[..., None], 0, 15)
    intweight = q.reshape(n, k).t().to(torch.int32)  # [K, N]
    parts = {"qweight": _awq_pack(intweight), "qzeros": _awq_pack(zeros.t().to(torch.int32)),
             "scales": scales.t().contiguous().to(torch.float16)}
    converted = AutoAWQConverter(group_size=group).process(
        {f"m.{name}": t for name, t in parts.items()})
    converted = {name[2:]: t for name, t in converted.items()}
    converted["weight_scale"] = converted["weight_scale"].float()
    scheme = QuantizationScheme(targets=["Linear"], weights=_ct_args(4, group, False))
    dense = PackedQuantizationCompressor.decompress(converted, scheme)["weight"].float()
    return parts, dense


# -- GPTQ --------------------------------------------------------------------------------------
def gptq_quantize(w: torch.Tensor, bits: int, group: int, sym: bool, desc_act: bool,
                  v2: bool = False, seed: int = 0):
    n, k = w.shape
    maxq = 2 ** bits - 1
    group = k if group == -1 else group
    if desc_act:  # act-order: rows quantized in a permuted order, g_idx by position in it
        order = torch.randperm(k, generator=torch.Generator().manual_seed(seed))
        g_idx = torch.empty(k, dtype=torch.int32)
        g_idx[order] = (torch.arange(k) // group).to(torch.int32)
    else:
        g_idx = (torch.arange(k) // group).to(torch.int32)
    scales = torch.empty(k // group, n)
    zeros = torch.empty(k // group, n)
    for g in range(k // group):  # Quantizer.find_params over the rows of group g
        x = w[:, g_idx == g]
        xmin, xmax = x.amin(1).clamp(max=0), x.amax(1).clamp(min=0)
        if sym:
            xmax = torch.maximum(xmin.abs(), xmax)
            xmin = torch.where(xmin < 0, -xmax, xmin)
        scale = _fp16((xmax - xmin) / maxq)
        scales[g] = scale
        zeros[g] = torch.full_like(scale, (maxq + 1) / 2) if sym else torch.round(-xmin / scale)
    assert zeros.min() >= 1, "GPTQ v1 cannot store a zero point of 0"
    s, z = scales[g_idx.long()], zeros[g_idx.long()]  # [K, N] per input row
    q = torch.clamp(torch.round(w.t() / s) + z, 0, maxq)  # [K, N]
    half = 2 ** (bits - 1)
    stored_zeros = zeros - (0 if v2 else 1)
    parts = {"qweight": pack_to_int32((q - half).to(torch.int8), bits, packed_dim=0),
             "qzeros": pack_to_int32((stored_zeros - half).to(torch.int8), bits, packed_dim=1),
             "scales": scales.to(torch.float16), "g_idx": g_idx}
    dense = (s * (q - z)).t().contiguous()  # GPTQ's reference dequantization
    return parts, dense


def gptq_config(bits: int, group: int, sym: bool, desc_act: bool, v2: bool = False) -> dict:
    return {"quant_method": "gptq", "bits": bits, "group_size": group, "desc_act": desc_act,
            "sym": sym, "checkpoint_format": "gptq_v2" if v2 else "gptq"}


# -- the two checkpoints ---------------------------------------------------------------------
def _input_seed(prefix: str) -> int:
    """One act-order per layer input: q/k/v share theirs, and gate/up (as GPTQ's would)."""
    for part, first in (("k_proj", "q_proj"), ("v_proj", "q_proj"), ("up_proj", "gate_proj")):
        prefix = prefix.replace(part, first)
    return sum(map(ord, prefix))


def write_int_checkpoint(src: Path, dst: Path, fmt: str, **opt) -> tuple[Path, Path]:
    """(quantized dir, dequantized dir). fmt: awq (group), gptq (bits, group, sym, desc_act,
    v2), pack-quantized / naive-quantized (bits, group or None for channel, sym)."""
    tensors = load_file(str(src / "model.safetensors"))
    quantized, dequantized = dict(tensors), dict(tensors)
    for name, w in tensors.items():
        prefix = name.removesuffix(".weight")
        if not (name.endswith(".weight") and prefix.endswith(PROJECTIONS)):
            continue
        if fmt == "awq":
            parts, dense = awq_quantize(w, opt["group"])
        elif fmt == "gptq":
            parts, dense = gptq_quantize(w, **opt, seed=_input_seed(prefix))
        else:
            parts, dense = ct_quantize(w, fmt, opt["bits"], opt["group"], opt["sym"])
        del quantized[name]
        quantized.update({f"{prefix}.{part}": t.contiguous() for part, t in parts.items()})
        dequantized[name] = dense
    config = json.loads((src / "config.json").read_text())
    config["quantization_config"] = (
        {"quant_method": "awq", "bits": 4, "group_size": opt["group"], "zero_point": True,
         "version": "gemm"} if fmt == "awq" else gptq_config(**opt) if fmt == "gptq"
        else ct_config(fmt, opt["bits"], opt["group"], opt["sym"]))
    deq = dst.with_name(dst.name + "-dequantized")
    for out, weights, cfg in ((dst, quantized, config), (deq, dequantized, None)):
        shutil.copytree(src, out, dirs_exist_ok=True)
        save_file(weights, str(out / "model.safetensors"))
        if cfg is not None:
            (out / "config.json").write_text(json.dumps(cfg, indent=1))
    return dst, deq
