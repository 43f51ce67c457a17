"""The seam quantized formats plug into: models.quantization's plan and layers.linear's
generic loading of a method's tagged parameters (fused slices, per-projection scalars)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from cormorant.layers.linear import (LinearMethod, MergedColumnParallelLinear,
                                     QKVParallelLinear, set_layout)
from cormorant.models import quantization


class RowInt8(LinearMethod):
    """A toy format: int8 codes [out, in] with a scale per output row, plus a scalar per fused
    projection, and a packed copy (two codes per int16 along the output dim)."""

    def create_weights(self, layer, input_size, output_size):
        layer.qweight = set_layout(nn.Parameter(
            torch.empty(output_size, input_size, dtype=torch.int8), requires_grad=False))
        layer.row_scale = set_layout(nn.Parameter(torch.empty(output_size),
                                                  requires_grad=False), input_dim=None)
        layer.proj_scale = set_layout(nn.Parameter(torch.empty(3), requires_grad=False),
                                      output_dim=None, input_dim=None)
        layer.packed = set_layout(nn.Parameter(torch.empty(output_size // 2, input_size),
                                               requires_grad=False),
                                  packed_dim=0, packed_factor=2)

    def apply(self, layer, x, bias):
        return nn.functional.linear(x, layer.qweight.float() * layer.row_scale[:, None], bias)


def test_fused_projections_load_tagged_params_into_their_slices():
    layer = QKVParallelLinear(hidden_size=8, head_dim=4, num_heads=2, num_kv_heads=1)
    layer.set_method(RowInt8())
    assert not hasattr(layer, "weight")  # the dense weight is gone
    sizes = {"q": 8, "k": 4, "v": 4}
    for i, (shard, rows) in enumerate(sizes.items()):
        layer.weight_loader(layer.qweight, torch.full((rows, 8), i + 1, dtype=torch.int8), shard)
        layer.weight_loader(layer.row_scale, torch.full((rows,), 0.5 * (i + 1)), shard)
        layer.weight_loader(layer.proj_scale, torch.tensor(10.0 * (i + 1)), shard)
        layer.weight_loader(layer.packed, torch.full((rows // 2, 8), float(i)), shard)
    assert layer.qweight[:8].eq(1).all() and layer.qweight[8:12].eq(2).all()
    assert layer.qweight[12:].eq(3).all()
    assert torch.equal(layer.row_scale, torch.tensor([0.5] * 8 + [1.0] * 4 + [1.5] * 4))
    assert torch.equal(layer.proj_scale, torch.tensor([10.0, 20.0, 30.0]))
    assert torch.equal(layer.packed[:, 0], torch.tensor([0.0] * 4 + [1.0] * 2 + [2.0] * 2))
    y = layer(torch.ones(1, 8))
    assert torch.equal(y[0], torch.tensor([4.0] * 8 + [16.0] * 4 + [36.0] * 4))


def test_a_tagged_param_of_the_wrong_size_fails_at_load():
    layer = MergedColumnParallelLinear(8, [6, 6])
    layer.set_method(RowInt8())
    with pytest.raises(ValueError, match="does not fit"):
        layer.weight_loader(layer.row_scale, torch.ones(5), 0)
    with pytest.raises(ValueError, match="does not fit"):
        layer.weight_loader(layer.packed, torch.ones(6, 8), 1)  # unpacked rows into packed


def test_plan_names_what_is_supported():
    assert quantization.plan(None, "auto") is None and quantization.plan(None, "none") is None
    with pytest.raises(ValueError, match="quant_method 'bitsandbytes' are not supported"):
        quantization.plan({"quant_method": "bitsandbytes"}, "auto")
    with pytest.raises(ValueError, match="unknown quantization 'int3'"):
        quantization.plan(None, "int3")
    with pytest.raises(ValueError, match="GGUF files only"):
        quantization.plan(None, "gguf")


def test_compressed_tensors_names_its_supported_weight_types_and_groups():
    with pytest.raises(ValueError, match="exactly one config group"):
        quantization.plan({"quant_method": "compressed-tensors", "config_groups": {}}, "auto")
    with pytest.raises(ValueError, match="weights of type 'nf4' are not supported"):
        quantization.plan({"quant_method": "compressed-tensors", "config_groups": {
            "g": {"targets": ["Linear"], "weights": {"type": "nf4"}}}}, "auto")


def test_ignore_lists_match_names_patterns_and_whole_fused_layers():
    class Fused(nn.Module):
        packed_modules_mapping = {"q_proj": ("qkv_proj", "q"), "k_proj": ("qkv_proj", "k"),
                                  "v_proj": ("qkv_proj", "v")}
    names = quantization.checkpoint_names(Fused(), "model.layers.0.self_attn.qkv_proj")
    assert names == [f"model.layers.0.self_attn.{p}_proj" for p in "qkv"]
    assert quantization.ignored(["lm_head"], ["lm_head"])
    assert quantization.ignored(names, [r"re:.*layers\.0\.self_attn\.[qkv]_proj"])
    assert not quantization.ignored(names, ["model.layers.1.self_attn.q_proj"])
    with pytest.raises(ValueError, match="only some of"):
        quantization.ignored(names, ["model.layers.0.self_attn.q_proj"])
