"""The FP8 weight kernels (kernels/fp8_gemm.py) against their PyTorch reference under the
interpreter: per-channel and block scales (ragged blocks at the N and K edges), the GEMV's
one-row and few-row paths, the GEMM's tl.dot tiles over ragged M/N/K, with and without bias.
fp32 activations: the CPU interpreter's tl.dot is wrong for bf16 (see test_gemv.py)."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton", reason="triton is not installed (pip install triton)")

from cormorant.kernels import fp8_gemm, fp8_quant  # noqa: E402


def _inputs(m, n, k, scale_n, group_k, device, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=gen)
    w = (torch.randn(n, k, generator=gen) * 100).clamp(-448, 448).to(fp8_gemm.FP8_DTYPE)
    s = torch.rand(-(-n // scale_n), -(-k // group_k), generator=gen) * 0.01 + 1e-3
    b = torch.randn(n, generator=gen)
    return x.to(device), w.to(device), s.to(device), b.to(device)


LAYOUTS = [(1, None), (16, 32), (8, 16)]  # (scale_n, group_k): per-channel, blocks


@pytest.mark.parametrize("m", [1, 3])
@pytest.mark.parametrize("scale_n,group_k", LAYOUTS)
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("kernel", ["bytes", "acc2d"])  # one row: which reduction
def test_fp8_gemv_matches_the_dequantized_reference(m, scale_n, group_k, bias, kernel, device):
    n, k = 40, 72  # neither a multiple of the block: the last blocks are partial
    group_k = group_k or k
    x, w, s, b = _inputs(m, n, k, scale_n, group_k, device, m + n + scale_n)
    b = b if bias else None
    cfg = dict(BLOCK_M=1 if m == 1 else 4, BLOCK_N=8, BLOCK_K=32, num_warps=4, num_stages=1,
               ACC2D=kernel == "acc2d")
    y = fp8_gemm.fp8_gemv(x, w, s, scale_n, group_k, b, config=cfg)
    ref = fp8_gemm.fp8_matmul_ref(x, w, s, scale_n, group_k, b)
    torch.testing.assert_close(y, ref, atol=1e-4, rtol=1e-4)


def test_the_gemv_reads_every_e4m3_code_exactly(device):
    """All 256 codes (subnormals, zeros, +-448; NaN codes aside) in a weight whose inputs are
    one-hot: each output is exactly code * scale, as the dequantized reference has it."""
    codes = torch.arange(256, dtype=torch.uint8).view(fp8_gemm.FP8_DTYPE)
    codes = codes[~codes.float().isnan()]
    n = codes.numel()
    k = 16
    w = torch.zeros(n, k, dtype=fp8_gemm.FP8_DTYPE)
    w[:, 5] = codes
    x = torch.zeros(1, k)
    x[0, 5] = 1.0
    s = torch.rand(n, 1, generator=torch.Generator().manual_seed(4)) + 0.5
    y = fp8_gemm.fp8_gemv(x.to(device), w.to(device), s.to(device), 1, k,
                          config=dict(BLOCK_M=1, BLOCK_N=16, BLOCK_K=16, num_warps=4,
                                      num_stages=1))
    assert torch.equal(y.cpu(), (codes.float() * s[:, 0])[None, :])


@pytest.mark.parametrize("m", [5, 33])
@pytest.mark.parametrize("scale_n,group_k", LAYOUTS)
@pytest.mark.parametrize("split", [1, 3])  # split-K: partials summed in the launch
@pytest.mark.parametrize("swap", [False, True])  # the tile computed transposed (W @ x^T)
def test_fp8_gemm_matches_the_dequantized_reference(m, scale_n, group_k, split, swap, device):
    n, k = 40, 80
    group_k = group_k or k
    x, w, s, b = _inputs(m, n, k, scale_n, group_k, device, 3 * m + group_k)
    cfg = dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=16, GROUP_M=2, num_warps=4, num_stages=1,
               SPLIT_K=split, K_PER_SPLIT=-(-80 // (16 * split)) * 16, SWAP=swap)
    y = fp8_gemm.fp8_gemm(x, w, s, scale_n, group_k, b, config=cfg)
    torch.testing.assert_close(y, fp8_gemm.fp8_matmul_ref(x, w, s, scale_n, group_k, b),
                               atol=1e-3, rtol=1e-4)


@pytest.mark.parametrize("m", [5, 70])
@pytest.mark.parametrize("scale_n,group_k", LAYOUTS)
@pytest.mark.parametrize("split", [1, 3])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("swap", [False, True])
def test_fp8_scaled_gemm_matches_the_dequantized_w8a8_reference(m, scale_n, group_k, split,
                                                                bias, swap, device):
    """W8A8: e4m3 activations with a scale per row times e4m3 weights (per-channel and block
    scales, ragged edges, split-K) equal the dequantized operands' fp32 product."""
    n, k = 40, 80
    group_k = group_k or k
    x, w, s, b = _inputs(m, n, k, scale_n, group_k, device, 5 * m + group_k)
    xq, xs = fp8_quant.quantize_rows(x * torch.linspace(0.1, 10, m, device=device)[:, None])
    # FP8 tl.dot needs K steps of 32 on the GPU; block scales of 16 then take the W8A16 test
    group_k = max(group_k, 32) if group_k != k else k
    s = s[:, :-(-k // group_k)].contiguous()
    cfg = dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=32, GROUP_M=2, num_warps=4, num_stages=1,
               SPLIT_K=split, K_PER_SPLIT=-(-80 // (32 * split)) * 32, SWAP=swap)
    b = b if bias else None
    y = fp8_gemm.fp8_scaled_gemm(xq, xs, w, s, scale_n, group_k, b, torch.float32, config=cfg)
    ref = fp8_gemm.fp8_scaled_gemm_ref(xq, xs, w, s, scale_n, group_k, b, torch.float32)
    assert xs.flatten().unique().numel() == m  # every row has its own scale
    torch.testing.assert_close(y, ref, atol=1e-3, rtol=1e-4)


@pytest.mark.parametrize("swap", [False, True])
def test_fp8_scaled_gemm_fast_accumulation_keeps_the_sums(swap, device):
    """FAST_ACC (opt-in, per-row scales): one accumulator through all of K. Exact on the CPU;
    on the GPU the FP8 tensor cores add in reduced precision, so the whole is compared."""
    m, n, k = 20, 48, 256
    x, w, s, _ = _inputs(m, n, k, 1, k, device, 11)
    xq, xs = fp8_quant.quantize_rows(x)
    cfg = dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=32, GROUP_M=2, num_warps=4, num_stages=1,
               SPLIT_K=2, K_PER_SPLIT=128, SWAP=swap, FAST_ACC=True)
    y = fp8_gemm.fp8_scaled_gemm(xq, xs, w, s, 1, k, None, torch.float32, config=cfg)
    ref = fp8_gemm.fp8_scaled_gemm_ref(xq, xs, w, s, 1, k, None, torch.float32)
    if device == "cpu":
        torch.testing.assert_close(y, ref, atol=1e-3, rtol=1e-4)
    else:
        assert float((y - ref).norm() / ref.norm()) < 1e-2
    with pytest.raises(AssertionError, match="FAST_ACC"):
        fp8_gemm.fp8_scaled_gemm(xq, xs, w, s.repeat(1, 2), 1, k // 2, config=cfg)


def test_a8_config_splits_k_where_the_tiles_leave_sms_idle():
    qkv = fp8_gemm.a8_config(128, 6144, 4096, 4096, True, 132)  # 48 tiles: K split 3 ways
    assert qkv["SPLIT_K"] == 3 and qkv["SPLIT_K"] * qkv["K_PER_SPLIT"] >= 4096
    gate_up = fp8_gemm.a8_config(256, 28672, 4096, 4096, True, 132)  # 448 tiles: no split
    assert gate_up["SPLIT_K"] == 1 and gate_up["BLOCK_M"] == 128
    block = fp8_gemm.a8_config(32, 4096, 14336, 128, False, 132)
    assert block["BLOCK_K"] == 128 and block["K_PER_SPLIT"] % 128 == 0


def test_dequantize_ref_scales_each_block():
    w = torch.ones(3, 5).to(fp8_gemm.FP8_DTYPE)
    s = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])  # blocks of 2 rows x 2 columns
    assert torch.equal(fp8_gemm.dequantize_ref(w, s, 2, 2), torch.tensor(
        [[1.0, 1, 2, 2, 3], [1, 1, 2, 2, 3], [4, 4, 5, 5, 6]]))


# -- the layer's CUDA dispatch, run on CPU tensors under the interpreter ----------------------
def _fp8_layer(strategy, block=None, rows=(24, 8, 8), k=64, seed=0):
    from cormorant.layers.fp8_linear import Fp8LinearMethod
    from cormorant.layers.linear import QKVParallelLinear

    gen = torch.Generator().manual_seed(seed)
    layer = QKVParallelLinear(hidden_size=k, head_dim=8, num_heads=rows[0] // 8,
                              num_kv_heads=rows[1] // 8)
    method = Fp8LinearMethod(strategy, block, scale_name="weight_scale_inv" if block else
                             "weight_scale")
    layer.set_method(method)
    scale_param = getattr(layer, method.scale_name)
    for i, (shard, n) in enumerate(zip("qkv", rows)):
        codes = (torch.randn(n, k, generator=gen) * 64).clamp(-448, 448).to(fp8_gemm.FP8_DTYPE)
        layer.weight_loader(layer.weight, codes, shard)
        if strategy == "tensor":
            scale = torch.tensor(0.01 * (i + 1))  # a different scalar per projection
        elif strategy == "channel":
            scale = torch.rand(n, 1, generator=gen) * 0.01 + 1e-3
        else:
            scale = torch.rand(n // block[0], -(-k // block[1]), generator=gen) * 0.01 + 1e-3
        layer.weight_loader(scale_param, scale, shard)
    method.finalize(layer)
    return layer, method


@pytest.mark.parametrize("strategy,block", [("tensor", None), ("channel", None),
                                            ("block", (8, 16))])
@pytest.mark.parametrize("m", [1, 6])
def test_fp8_layer_kernels_compute_what_its_cpu_reference_computes(strategy, block, m,
                                                                   device):
    from cormorant.layers.fp8_linear import FP8_GEMV_MAX_ROWS

    layer, method = _fp8_layer(strategy, block)
    assert layer.weight_scale.dtype == torch.float32 and layer.weight_scale.dim() == 2
    x = torch.randn(m, 64, generator=torch.Generator().manual_seed(m))
    ref = method.apply(layer, x, None)  # CPU: dequantize, then F.linear
    layer.to(device)
    y = method._cuda_matmul(fp8_gemm, layer, x.to(device), None)  # CUDA's path for m rows
    assert (m <= FP8_GEMV_MAX_ROWS) == (m == 1)
    torch.testing.assert_close(y.cpu(), ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("strategy,block", [("channel", None), ("block", (8, 32))])
def test_fp8_layer_routes_rows_to_the_w8a8_kernel_when_asked(strategy, block, device,
                                                             monkeypatch):
    """CORMORANT_FP8_A8_ROWS: rows quantized per token, then fp8_scaled_gemm; the result is
    what the quantized activations times the dequantized weight give."""
    from cormorant.layers import fp8_linear

    layer, method = _fp8_layer(strategy, block)
    layer.to(device)
    x = torch.randn(6, 64, generator=torch.Generator().manual_seed(1)).to(device)
    monkeypatch.setattr(fp8_linear, "GEMV_DTYPES", (torch.float32,))
    monkeypatch.setattr(fp8_linear, "FP8_A8_MAX_ROWS", 8)
    monkeypatch.setattr(fp8_linear, "FP8_GEMM_MAX_ROWS", 1)  # not the W8A16 rows
    calls = []
    monkeypatch.setattr(fp8_gemm, "fp8_gemm", lambda *a, **k: calls.append(a))
    y = method._cuda_matmul(fp8_gemm, layer, x, None)
    xq, xs = fp8_quant.quantize_rows(x)  # its codes (the interpreter's casts: see below)
    ref = fp8_gemm.fp8_scaled_gemm_ref(xq, xs, layer.weight, layer.weight_scale,
                                       method.scale_n, method.group_k, None, x.dtype)
    assert not calls  # not the W8A16 tiles
    # on the GPU the FP8 tensor cores sum each K step in their reduced-precision adders (the
    # H100 gave 2.5e-2 relative error on an element near zero): checked there as a whole
    if y.device.type == "cuda":
        assert ((y - ref).norm() / ref.norm()) < 2e-3
    else:
        torch.testing.assert_close(y, ref, atol=1e-4, rtol=1e-4)
    exact = method.apply(layer.cpu(), x.cpu(), None)  # unquantized activations: FP8 noise
    assert ((y.cpu() - exact).norm() / exact.norm()) < 0.05


def test_per_tensor_scales_of_a_fused_layer_expand_per_projection():
    layer, method = _fp8_layer("tensor")
    expected = torch.tensor([0.01] * 24 + [0.02] * 8 + [0.03] * 8)
    assert torch.equal(layer.weight_scale[:, 0], expected)
    w = method.dequantized(layer, torch.float32)
    assert torch.equal(w[24:32], layer.weight[24:32].float() * 0.02)


def test_scaled_mm_reference_quantizes_activations_per_token():
    from cormorant.layers.fp8_linear import quantize_activations, quantize_rows, scaled_mm_ref

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(5, 64, generator=gen) * torch.tensor([1, 10, 100, 0.1, 1.0])[:, None]
    w = torch.randn(24, 64, generator=gen) * 0.05
    codes, scale = quantize_rows(w)
    xq, xs = quantize_activations(x, None)
    assert torch.equal(xs[:, 0], x.abs().amax(1) / 448)  # one scale per token
    y = scaled_mm_ref(x, codes, scale, None, None)
    exact = x @ (codes.float() * scale).t()
    assert ((y - exact).norm(dim=1) / exact.norm(dim=1)).max() < 0.05  # per row: FP8 noise
    static = scaled_mm_ref(x, codes, scale, torch.tensor([0.1]), None)  # one scale: clips at 44.8
    err = (static - exact).norm(dim=1) / exact.norm(dim=1)
    assert err[2] > 0.3 and err[3] < 0.05  # the x100 token clips, the x0.1 token fits


@pytest.mark.parametrize("scale_n,group_k", [(1, None), (8, 16)])
@pytest.mark.parametrize("with_residual", [False, True])
@pytest.mark.parametrize("kernel", ["bytes", "acc2d"])
def test_fp8_gemv_add_norm_prologue_matches_norm_then_gemv(scale_n, group_k, with_residual,
                                                          kernel, device):
    n, k = 40, 96
    group_k = group_k or k
    x, w, s, b = _inputs(1, n, k, scale_n, group_k, device, 5)
    gen = torch.Generator().manual_seed(9)
    residual = torch.randn(1, k, generator=gen).to(device) if with_residual else None
    norm_w = (torch.rand(k, generator=gen) + 0.5).to(device)
    cfg = dict(BLOCK_M=1, BLOCK_N=8, BLOCK_K=32, num_warps=4, num_stages=1,
               ACC2D=kernel == "acc2d")
    y, total = fp8_gemm.fp8_add_rms_norm_gemv(x, residual, norm_w, 1e-6, w, s, scale_n,
                                              group_k, b, config=cfg)
    ref_y, ref_total = fp8_gemm.fp8_add_rms_norm_gemv_ref(x, residual, norm_w, 1e-6, w, s,
                                                          scale_n, group_k, b)
    assert torch.equal(total, ref_total)
    torch.testing.assert_close(y, ref_y, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("scale_n,group_k", [(1, None), (8, 16)])
@pytest.mark.parametrize("kernel", ["bytes", "acc2d"])
def test_fp8_gemv_silu_mul_prologue_matches_activation_then_gemv(scale_n, group_k, kernel,
                                                                 device):
    n, k = 48, 80
    group_k = group_k or k
    _, w, s, b = _inputs(1, n, k, scale_n, group_k, device, 6)
    gate_up = (torch.randn(1, 2 * k, generator=torch.Generator().manual_seed(2)) * 2).to(device)
    cfg = dict(BLOCK_M=1, BLOCK_N=8, BLOCK_K=32, num_warps=4, num_stages=1,
               ACC2D=kernel == "acc2d")
    y = fp8_gemm.fp8_silu_mul_gemv(gate_up, w, s, scale_n, group_k, b, config=cfg)
    torch.testing.assert_close(
        y, fp8_gemm.fp8_silu_mul_gemv_ref(gate_up, w, s, scale_n, group_k, b),
        atol=1e-4, rtol=1e-4)
