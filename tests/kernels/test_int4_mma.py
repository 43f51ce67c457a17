"""kernels/int4_mma.py (int4 weight-only matmul of 2-64 rows on tensor cores) against
kernels.int_gemm's PyTorch reference: 2 to 64 rows (x padded to 16, 32, 64), groups of 64 and
128, with zero points and symmetric, ragged N and K, split K reduced in the launch, and
int_gemm routing int4 calls to it. Under the interpreter (CPU) in fp32: the interpreter's bf16
tl.dot is wrong (see test_gemv.py), so the bf16 / fp16 forms (one lop3 and a packed subtract
per two codes, inline PTX) are tested on a CUDA card only."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton", reason="triton is not installed (pip install triton)")

from cormorant.kernels import int4_mma, int_gemm, split_k  # noqa: E402
from cormorant.layers import int_packing  # noqa: E402
from test_int_gemm import _weights  # noqa: E402 (the same packed random weights)

ON_CUDA = torch.cuda.is_available()


def _config(words, split, per_split, block_n=32, block_m=16):
    return dict(BLOCK_M=block_m, BLOCK_N=block_n, WORDS=words, SPLIT_K=split,
                K_PER_SPLIT=per_split, num_warps=4, num_stages=1)


@pytest.mark.parametrize("m,n,k,group,config", [
    (2, 40, 256, 128, _config(16, 2, 128)),  # two rows, two splits, ragged N
    (2, 64, 384, 64, _config(8, 2, 256)),  # groups of 64; the last split ragged in K
    (3, 40, 256, 128, _config(16, 1, 256)),  # a few rows, one split
    (16, 72, 512, 128, _config(16, 3, 256, 64)),  # 16 rows; a split with no tile left
    (5, 96, 256, 64, None),  # the default launch settings
    (33, 40, 256, 128, _config(16, 2, 128, block_m=64)),  # 33 rows in a 64-row dot
    (20, 40, 256, 64, None),  # 17-32 rows: the default pads x to 32
    (64, 32, 128, 64, _config(8, 1, 128, block_m=64)),  # 64 rows, the most it takes
])
@pytest.mark.parametrize("symmetric", [False, True])
def test_int4_mma_matches_the_reference(m, n, k, group, config, symmetric, device):
    qweight, scales, zeros, gen = _weights(k, n, 4, group, device, m + n + k, symmetric)
    x = torch.randn(m, k, generator=gen).to(device)
    y = int4_mma.int4_mma(x, qweight, scales, zeros, group, config=config)
    ref = int_gemm.int_gemm_ref(x, qweight, scales, zeros, 4, group)
    assert y.shape == (m, n) and y.dtype == x.dtype
    torch.testing.assert_close(y, ref, atol=1e-4, rtol=1e-4)
    assert not split_k.LOCKS[x.device].any()  # the counters are left at zero
    again = int4_mma.int4_mma(x, qweight, scales, zeros, group, config=config)
    assert torch.equal(again, y)  # splits summed in a fixed order


def test_int_gemm_routes_int4_rows_to_it(monkeypatch, device):
    """Without an explicit config, int4 calls of 2 to MMA_ROWS (64) rows run int4_mma; one
    row (the GEMV, with or without a prologue), 8 bits and 65 rows keep int_gemm's kernels;
    MMA_ROWS 0 turns it off, 16 keeps 17 rows on the tile kernel."""
    calls = []
    real = int4_mma.int4_mma
    monkeypatch.setattr(int4_mma, "int4_mma", lambda *a, **kw: calls.append(a[0].shape)
                        or real(*a, **kw))
    k, n = 256, 40
    qweight, scales, zeros, gen = _weights(k, n, 4, 128, device, 23, True)
    x = torch.randn(2, k, generator=gen).to(device)
    ref = int_gemm.int_gemm_ref(x, qweight, scales, zeros, 4, 128)
    torch.testing.assert_close(int_gemm.int_gemm(x, qweight, scales, zeros, 4, 128), ref,
                               atol=1e-4, rtol=1e-4)
    assert calls == [(2, k)]
    norm_w = torch.ones(k, device=device)
    int_gemm.int_gemm(x[:1], qweight, scales, zeros, 4, 128)
    int_gemm.int_add_rms_norm_gemv(x[:1], None, norm_w, 1e-6, qweight, scales, zeros, 4, 128)
    int_gemm.int_silu_mul_gemv(torch.randn(1, 2 * k, device=device), qweight, scales, zeros,
                               4, 128)
    q8 = int_packing.pack(torch.randint(0, 256, (k, n), dtype=torch.int32), 8, 0).to(device)
    int_gemm.int_gemm(x, q8, scales, None, 8, 128)  # 8 bits: the tile kernel
    int_gemm.int_gemm(torch.randn(65, k, device=device), qweight, scales, zeros, 4, 128)
    assert calls == [(2, k)]
    x33 = torch.randn(33, k, generator=gen).to(device)
    torch.testing.assert_close(int_gemm.int_gemm(x33, qweight, scales, zeros, 4, 128),
                               int_gemm.int_gemm_ref(x33, qweight, scales, zeros, 4, 128),
                               atol=1e-4, rtol=1e-4)
    assert calls == [(2, k), (33, k)]
    monkeypatch.setattr(int_gemm, "MMA_ROWS", 0)
    torch.testing.assert_close(int_gemm.int_gemm(x, qweight, scales, zeros, 4, 128), ref,
                               atol=1e-4, rtol=1e-4)
    monkeypatch.setattr(int_gemm, "MMA_ROWS", 16)  # CORMORANT_INT4_MMA_ROWS=16: 17 rows stay
    int_gemm.int_gemm(torch.randn(17, k, device=device), qweight, scales, zeros, 4, 128)
    assert calls == [(2, k), (33, k)]


def test_configs_follow_the_h100_sweeps():
    """config_for's settings are the H100 sweeps' best (int4_probe --mma --sweep, Llama-3.1-8B,
    benchmarks/RESULTS.md): 16 rows as swept at 14:12, 17-64 rows as swept at 19:48 (BLOCK_M
    32 / 64, 8 warps, 3 stages; qkv split 6, o 8, gate_up 2, down 16)."""
    shapes = {"qkv": (6144, 4096), "o": (4096, 4096), "gate_up": (28672, 4096),
              "down": (4096, 14336)}
    swept = {"qkv": 6, "o": 8, "gate_up": 2, "down": 16}
    for m, block_m in ((17, 32), (32, 32), (48, 64), (64, 64)):
        for name, (n, k) in shapes.items():
            cfg = int4_mma.config_for(m, n, k, 128, 132)
            assert (cfg["BLOCK_M"], cfg["BLOCK_N"], cfg["num_warps"], cfg["num_stages"]) == (
                block_m, 128, 8, 3), (m, name, cfg)
            assert cfg["SPLIT_K"] == swept[name], (m, name, cfg)
            assert cfg["SPLIT_K"] * cfg["K_PER_SPLIT"] >= k
    sixteen = {name: int4_mma.config_for(16, n, k, 128, 132) for name, (n, k) in shapes.items()}
    assert [(c["num_warps"], c["num_stages"]) for c in sixteen.values()] == [
        (8, 2), (8, 2), (4, 3), (8, 2)]


def test_bad_settings_are_refused(device):
    qweight, scales, zeros, gen = _weights(256, 32, 4, 64, device, 24, True)
    x = torch.randn(2, 256, generator=gen).to(device)
    with pytest.raises(ValueError, match="one group"):  # a 128-code tile across two groups
        int4_mma.int4_mma(x, qweight, scales, zeros, 64, config=_config(16, 1, 256))
    with pytest.raises(ValueError, match="must hold"):  # 17 rows in a 16-row dot
        int4_mma.int4_mma(torch.randn(17, 256, generator=gen).to(device), qweight, scales,
                          zeros, 64, config=_config(8, 1, 256))
    assert int4_mma.supports(16, 4, 128, x) and int4_mma.supports(2, 4, 64, x)
    assert int4_mma.supports(64, 4, 128, x)
    assert not int4_mma.supports(1, 4, 128, x) and not int4_mma.supports(65, 4, 128, x)
    assert not int4_mma.supports(2, 8, 128, x)
    assert not int4_mma.supports(2, 4, 32, x)


@pytest.mark.skipif(not ON_CUDA, reason="needs CUDA (the bf16 / fp16 forms: inline PTX)")
def test_the_half_precision_forms_on_the_card():
    """The codes made by lop3 + packed subtract are exact, so the error is the inputs'
    rounding and the fp32 sums': within 2^-8 of the fp32 reference; bf16 and fp16, 2 to 64
    rows, with zero points and symmetric; int_gemm routes the call here (the same bits)."""
    for dtype in (torch.bfloat16, torch.float16):
        for m in (2, 7, 16, 33, 64):
            for symmetric in (False, True):
                _half_precision_case(dtype, m, symmetric)


def _half_precision_case(dtype, m, symmetric):
    k, n, group = 4096, 1024, 128
    qweight, scales, zeros, gen = _weights(k, n, 4, group, "cuda", 25 + m, symmetric)
    x = torch.randn(m, k, generator=gen).to("cuda", dtype)
    scales = scales.to(dtype)
    zeros = None if zeros is None else zeros.to(dtype)
    y = int4_mma.int4_mma(x, qweight, scales, zeros, group)
    ref = int_gemm.int_gemm_ref(x.float(), qweight, scales, zeros, 4, group)
    assert y.dtype == dtype
    assert float((y.float() - ref).norm() / ref.norm()) < 2 ** -8
    if m <= int_gemm.MMA_ROWS:  # rows that int_gemm routes here (64 by default)
        assert torch.equal(int_gemm.int_gemm(x, qweight, scales, zeros, 4, group), y)
