"""Many rows on the quantized CPU path (layers.gguf_linear, layers.rescored_head): a call of at
least DENSE_MIN_ROWS rows dequantizes the int4 weight for a dense matmul. The dequantized
matrix is exactly the kernel's weight, read back from its packed layout (every layout ATen
packs in, each CPU capability in its own process), the dense path stays within a stated
tolerance of the int4 kernel, the LM head scores a batch of rows on its bf16 copy (exact at
the top after rescoring), and a tiny GGUF model's prefill of many rows gives the int4 path's
logits within tolerance."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from gguf import GGMLQuantizationType as Q

from cormorant.layers import gguf_linear
from cormorant.layers.attention import TorchAttention
from cormorant.layers.gguf_linear import (DENSE_MIN_ROWS, GROUP, Int4CpuMethod, Int4Layout,
                                          Int4PairCpuMethod, dequantize_t, quantize_int4_groups)
from cormorant.layers.linear import ColumnParallelLinear
from cormorant.models.loader import load_model
from gguf_test_utils import write_gguf
from model_test_utils import PagedRunner, make_hf_model

# |dense - int4| / max |int4| over a layer's outputs: both round the output to bf16 (2^-9
# relative each), the dense side also rounds each weight to bf16 (2^-9 relative).
TOLERANCE = 0.01
# 48 rows: one short block; 176: two blocks of 64 and a short one of 48; 192: three blocks.
SHAPES = [(48, 512), (176, 64), (192, 96)]


def _int4_layer(method: Int4CpuMethod, rows: int, cols: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(rows, cols, generator=gen) * 0.05
    layer = ColumnParallelLinear(cols, rows, bias=False, method=method)
    with torch.no_grad():
        if type(method) is Int4CpuMethod:
            codes, scale, low = quantize_int4_groups(weight)
            layer.weight.data.copy_(codes)
            layer.w_scale.copy_(scale)
            layer.w_offset.copy_(low)
        else:
            layer.weight_loader(layer.weight, weight)
        method.finalize(layer)
    return layer, weight


def _kernel_weight_t(layer, codes: torch.Tensor) -> torch.Tensor:
    """What the int4 kernel multiplies by, written out: (code - 8) * scale + zero in float32
    from its bf16 scales and zeros [groups, out, 2]; codes [out, in]."""
    sz = layer.scales_zeros.float()
    scale, zero = (sz[..., i].t().repeat_interleave(GROUP, 1) for i in (0, 1))
    return ((codes.float() - 8) * scale + zero).t()


@pytest.mark.parametrize("rows,cols", SHAPES)
def test_dequantized_weight_is_exactly_the_kernels(rows, cols):
    layer, weight = _int4_layer(Int4CpuMethod(), rows, cols)
    assert layer.int4_layout is not None
    codes = quantize_int4_groups(weight)[0]
    w_t = dequantize_t(layer.weight, layer.scales_zeros, layer.int4_layout)
    assert w_t.shape == (cols, rows) and w_t.dtype == torch.float32
    assert torch.equal(w_t, _kernel_weight_t(layer, codes))
    # And the kernel agrees: its bf16 output is that matrix's product, rounded once (2^-9
    # relative) after a float32 sum in another order.
    x = torch.randn(6, cols).to(torch.bfloat16)
    kernel = torch.ops.aten._weight_int4pack_mm_for_cpu(x, layer.weight, GROUP,
                                                        layer.scales_zeros).float()
    ref = x.float() @ w_t
    assert ((kernel - ref).abs() <= ref.abs() * 2 ** -8 + 1e-4 * ref.abs().max()).all()


_OTHER_CAPABILITY = """
import torch
from cormorant.layers.gguf_linear import dequantize_t, find_layout
codes = torch.randint(0, 16, (176, 64), generator=torch.Generator().manual_seed(0))
packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes.int(), 1)
layout = find_layout(packed, 176, 64, codes)
sz = torch.stack([torch.ones(2, 176), torch.zeros(2, 176)], -1).to(torch.bfloat16)
assert torch.equal(dequantize_t(packed, sz, layout), (codes - 8).float().t())
print(torch.backends.cpu.get_cpu_capability(), layout.block, layout.halves)
"""


@pytest.mark.parametrize("capability,layout", [("avx2", Int4Layout(32, True)),
                                               ("default", Int4Layout(32, False))])
def test_the_packed_layouts_of_other_cpu_capabilities_read_back(capability, layout):
    """ATen packs by the vector width it dispatches to; the dense path must read each."""
    env = {**os.environ, "ATEN_CPU_CAPABILITY": capability}
    out = subprocess.run([sys.executable, "-c", _OTHER_CAPABILITY], env=env, text=True, check=False,
                         capture_output=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [capability.upper(), str(layout.block), str(layout.halves)]


@pytest.mark.parametrize("method_type", [Int4CpuMethod, Int4PairCpuMethod])
def test_many_rows_run_dense_within_tolerance_of_the_int4_kernel(method_type):
    layer, _ = _int4_layer(method_type(), 192, 96)
    x = torch.randn(DENSE_MIN_ROWS, 96)
    with torch.no_grad():
        dense = layer(x)
        few = layer(x[:-1])  # one row short: the int4 kernel
        layer.method.dense_min_rows = None
        int4 = layer(x)
    assert torch.equal(few, int4[:-1])
    assert not torch.equal(dense, int4)  # another path ran
    err = (dense - int4).abs().max() / int4.abs().max()
    assert err <= TOLERANCE, f"relative difference {err:.4f}"


@pytest.mark.parametrize("method_type", [Int4CpuMethod, Int4PairCpuMethod])
def test_a_large_weight_is_dequantized_in_slabs_with_the_same_result(method_type, monkeypatch):
    """Slabs of 64 output features (two full blocks, then the short block of 48)."""
    layer, _ = _int4_layer(method_type(), 176, 64)
    x = torch.randn(DENSE_MIN_ROWS, 64)
    with torch.no_grad():
        whole = layer(x)
        k = layer.scales_zeros.shape[0] * GROUP
        monkeypatch.setattr(gguf_linear, "DENSE_SLAB_BYTES", 4 * k * 64)
        slabs = layer(x)
        layer.method.dense_min_rows = None
        int4 = layer(x)
    torch.testing.assert_close(slabs, whole, rtol=2 ** -8, atol=1e-4 * whole.abs().max().item())
    assert (slabs - int4).abs().max() / int4.abs().max() <= TOLERANCE


def test_lm_head_scores_a_batch_of_rows_on_its_bf16_copy():
    from cormorant.layers.embedding import ParallelLMHead
    from cormorant.layers.rescored_head import BF16_MIN_ROWS, RESCORE_TOP, RescoredLMHead

    torch.manual_seed(0)
    dense = ParallelLMHead(1024, 128)
    dense.weight.data.normal_(0, 0.5)
    head = RescoredLMHead(dense)
    head.rows_kernel = head.bf16_kernel = None  # ATen's pair, oneDNN: a CPU without the op
    hidden = torch.randn(BF16_MIN_ROWS, 128)
    with torch.no_grad():
        ref = dense(hidden)
        ours = head(hidden)  # the bf16 copy, rescored
        head.bf16_min_rows = None
        pair = head(hidden)  # the same rows on the int4 pair, rescored
    top = ref.topk(RESCORE_TOP // 2, dim=-1).indices
    torch.testing.assert_close(ours.gather(-1, top), ref.gather(-1, top), atol=1e-5, rtol=1e-5)
    assert torch.equal(ours.argmax(-1), ref.argmax(-1))
    # The tail keeps the bf16 error: not exact, within the int4 pair's tolerance.
    tail, pair_tail = ((x - ref).abs().max().item() for x in (ours, pair))
    assert 0 < tail < 0.02 * ref.abs().max().item() and pair_tail > 0
    assert not torch.equal(ours, pair)


def _int4_layers(model) -> list:
    """The decoder's int4 layers (not the LM head's own int4 pair)."""
    return [m for m in model.model.modules()
            if isinstance(getattr(m, "method", None), Int4CpuMethod)]


def test_tiny_model_prefill_of_many_rows_matches_the_int4_path(tmp_path):
    """16 prompts of 5 tokens: an 80-row prefill (dense projections, bf16 head), then 16
    decode rows (int4 projections, bf16 head); against the same model on the int4 kernels
    everywhere and against the float32 dequantized model."""
    path = tmp_path / "tiny.gguf"
    write_gguf(make_hf_model("qwen3-qknorm"), path, "qwen3", qtypes={"": Q.Q4_1})
    prompts = {i: [(7 * i + j) % 120 + 1 for j in range(5)] for i in range(16)}
    logits = {}
    for case in ("dense rows", "int4 only", "float32"):
        model, config = load_model(str(path), torch.float32, "cpu", TorchAttention(),
                                   quantization="none" if case == "float32" else "gguf")
        if case != "float32":
            layers = _int4_layers(model)
            assert layers and all(m.method.runs_dense(m, 80) and not m.method.runs_dense(m, 16)
                                  for m in layers)
        if case == "int4 only":
            for layer in layers:
                layer.method.dense_min_rows = None
            model.lm_head.bf16_min_rows = None
        runner = PagedRunner(model, config, num_seqs=16, max_len=8)
        prefill = runner.step(prompts)
        decode = runner.step({i: [3] for i in range(16)})
        logits[case] = torch.cat([*prefill.values(), *decode.values()])  # [96, vocab]
    ours, int4, ref = logits["dense rows"], logits["int4 only"], logits["float32"]
    assert not torch.equal(ours, int4)
    assert (ours - int4).abs().max() / int4.abs().max() < 0.02
    assert (ours - ref).abs().max() / ref.abs().max() < 0.03  # the int4 path's own bound
