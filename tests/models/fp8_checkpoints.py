"""FP8 checkpoints made at test time from a tiny random model, each with an fp32 reference that
dequantizes them by code we did not write.

- compressed-tensors: written by the `compressed-tensors` library itself (apply_quantization_config,
  its calculate_qparams, ModelCompressor "float-quantized"); the reference weights are its own
  `dequantize` of the saved tensors.
- quant_method "fp8" with weight_block_size: our packing (below: block amax / 448, the scale
  saved as `weight_scale_inv`); the reference is transformers' FineGrainedFP8 integration
  loading the checkpoint with dequantize=True.
- quant_method "fp8" per-tensor (static activations): our packing; the reference weights are
  compressed-tensors' `dequantize` with a per-tensor FP8 QuantizationArgs.
Each writer returns the reference: a transformers model (fp32) holding the dequantized weights.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
import transformers
from safetensors.torch import load_file, save_file

from tiny import load_reference

FP8 = torch.float8_e4m3fn
CALIBRATION = [[5, 17, 99, 3, 42, 8, 9, 11], [7, 1, 2, 3, 4, 200, 301]]


def _linear_names(model) -> list[str]:
    return [n for n, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and n != "lm_head"]


@torch.no_grad()
def _input_amax(model) -> dict[str, float]:
    """Per linear layer, the largest |input| over the calibration prompts."""
    amax: dict[str, float] = {}
    hooks = [model.get_submodule(n).register_forward_pre_hook(
        lambda m, args, n=n: amax.__setitem__(n, max(amax.get(n, 0.0),
                                                     float(args[0].abs().max()))))
        for n in _linear_names(model)]
    for ids in CALIBRATION:
        model(torch.tensor([ids]))
    for h in hooks:
        h.remove()
    return amax


def _ct_scheme(kind: str, block: tuple[int, int] | None):
    from compressed_tensors.quantization import (QuantizationArgs, QuantizationScheme,
                                                 preset_name_to_scheme)
    if kind != "block":
        return preset_name_to_scheme({"channel": "FP8_DYNAMIC", "tensor": "FP8"}[kind],
                                     ["Linear"])
    fp8 = dict(num_bits=8, type="float", symmetric=True)
    return QuantizationScheme(
        targets=["Linear"],
        weights=QuantizationArgs(**fp8, strategy="block", dynamic=False,
                                 block_structure=list(block)),
        input_activations=QuantizationArgs(**fp8, strategy="group", dynamic=True,
                                           group_size=block[1]))


def _ct_weight_range(w: torch.Tensor, strategy: str, block: tuple[int, int] | None):
    if strategy == "channel":
        return w.amin(1, keepdim=True), w.amax(1, keepdim=True)
    if strategy == "tensor":
        return w.min().reshape(1), w.max().reshape(1)
    bn, bk = block
    blocks = w.reshape(w.shape[0] // bn, bn, w.shape[1] // bk, bk)
    return blocks.amin(dim=(1, 3)), blocks.amax(dim=(1, 3))


@torch.no_grad()
def write_compressed_tensors(base: Path, out: Path, kind: str,
                             block: tuple[int, int] | None = None):
    """kind "channel" (FP8_DYNAMIC), "tensor" (FP8: static input scales) or "block"."""
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import QuantizationConfig, apply_quantization_config
    from compressed_tensors.quantization.lifecycle.forward import dequantize
    from compressed_tensors.quantization.utils import calculate_qparams

    model = load_reference(base)
    amax = _input_amax(model)
    scheme = _ct_scheme(kind, block)
    apply_quantization_config(model, QuantizationConfig(config_groups={"group_0": scheme},
                                                        ignore=["lm_head"]))
    for name in _linear_names(model):
        module = model.get_submodule(name)
        lo, hi = _ct_weight_range(module.weight.data, kind, block)
        module.weight_scale.data.copy_(calculate_qparams(lo, hi, scheme.weights)[0]
                                       .reshape(module.weight_scale.shape))
        if hasattr(module, "input_scale"):
            a = torch.tensor([amax[name]])
            module.input_scale.data.copy_(calculate_qparams(-a, a, scheme.input_activations)[0]
                                          .reshape(module.input_scale.shape))
    compressor = ModelCompressor.from_pretrained_model(model, quantization_format="float-quantized")
    compressor.compress_model(model)
    model.save_pretrained(str(out))
    compressor.update_config(str(out))
    _copy_side_files(base, out)
    saved = load_file(str(out / "model.safetensors"))
    return _reference(base, {name: dequantize(saved[f"{name}.weight"],
                                              saved[f"{name}.weight_scale"], args=scheme.weights)
                             for name in _linear_names(model)})


def _copy_side_files(base: Path, out: Path) -> None:
    for f in base.iterdir():
        if f.suffix != ".safetensors" and f.name != "config.json":
            shutil.copy(f, out / f.name)


def _reference(base: Path, weights: dict[str, torch.Tensor]):
    """The base model with the given linear weights (the dequantized ones), fp32."""
    model = load_reference(base)
    with torch.no_grad():
        for name, w in weights.items():
            model.get_submodule(name).weight.copy_(w.float())
    return model


def _write_fp8(base: Path, out: Path, quant_config: dict, pack) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    state = load_file(str(base / "model.safetensors"))
    saved = {}
    for key, w in state.items():
        if key.endswith("_proj.weight"):
            saved.update(pack(key, w))
        else:
            saved[key] = w
    save_file(saved, str(out / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((base / "config.json").read_text())
    config["quantization_config"] = quant_config
    (out / "config.json").write_text(json.dumps(config))
    _copy_side_files(base, out)
    return saved


def pack_blocks(w: torch.Tensor, bn: int, bk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Block-wise FP8 as DeepSeek-V3 / transformers' FineGrainedFP8 store it: per [bn, bk]
    block, scale_inv = amax / 448 and codes = w / scale_inv."""
    n, k = w.shape
    blocks = w.float().reshape(n // bn, bn, k // bk, bk)
    scale = (blocks.abs().amax(dim=(1, 3)) / 448).clamp(min=1e-12)
    codes = (blocks / scale[:, None, :, None]).clamp(-448, 448).reshape(n, k).to(FP8)
    return codes, scale


def write_fp8_blocks(base: Path, out: Path, block: tuple[int, int]):
    bn, bk = block
    def pack(key, w):
        codes, scale = pack_blocks(w, bn, bk)
        return {key: codes, key + "_scale_inv": scale}
    _write_fp8(base, out, {"quant_method": "fp8", "activation_scheme": "dynamic",
                           "weight_block_size": [bn, bk]}, pack)
    return transformers.AutoModelForCausalLM.from_pretrained(
        str(out), dtype=torch.float32, attn_implementation="eager",
        quantization_config=transformers.FineGrainedFP8Config(weight_block_size=block,
                                                              dequantize=True)).eval()


def write_fp8_per_tensor(base: Path, out: Path):
    """quant_method "fp8" without blocks: a per-tensor weight_scale and a static input_scale
    per projection (q, k, v get different scales: the fused layer must expand them)."""
    from compressed_tensors.quantization import QuantizationArgs
    from compressed_tensors.quantization.lifecycle.forward import dequantize

    amax = _input_amax(load_reference(base))
    def pack(key, w):
        scale = (w.abs().max() / 448).reshape(())
        name = key.removesuffix(".weight")
        return {key: (w / scale).clamp(-448, 448).to(FP8), name + ".weight_scale": scale,
                name + ".input_scale": torch.tensor(amax[name] / 448)}
    saved = _write_fp8(base, out, {"quant_method": "fp8", "activation_scheme": "static"}, pack)
    args = QuantizationArgs(num_bits=8, type="float", symmetric=True, strategy="tensor")
    return _reference(base, {k.removesuffix(".weight"): dequantize(
        v, saved[k + "_scale"].reshape(1), args=args) for k, v in saved.items()
        if v.dtype == FP8})
