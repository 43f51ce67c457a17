"""The weight-only int GEMM (kernels/int_gemm.py) against its PyTorch reference, under the
interpreter on the CPU: 4 and 8 bits, with zero points and symmetric (none read); the one-row
GEMV kernel and the tile kernel (a few rows: tl.dot) with split-K, the prefill shape; scales
applied per tile (a whole group in a K tile) and per element (groups smaller than the tile);
ragged M and N; and an int4 layer of a model dispatching to the kernel
(INT_KERNEL_DEVICE_TYPES widened to the CPU) computes what the layer's CPU reference computes.
The tile kernel in fp32 only: the interpreter's bf16 tl.dot is wrong (see test_gemv.py); the
GEMV kernel (no tl.dot) in bf16 too. benchmarks/int4_probe.py checks bf16 on the GPU."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton", reason="triton is not installed (pip install triton)")

from cormorant.kernels import int_gemm, split_k  # noqa: E402
from cormorant.layers import int_packing  # noqa: E402


def _weights(k, n, bits, group, device, seed, symmetric=False):
    gen = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 2 ** bits, (k, n), generator=gen, dtype=torch.int32)
    scales = torch.rand(k // group, n, generator=gen) * 0.02 + 0.001
    zeros = torch.randint(0, 2 ** bits, (k // group, n), generator=gen).float()
    zeros = None if symmetric else zeros.to(device)
    return int_packing.pack(codes, bits, 0).to(device), scales.to(device), zeros, gen


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("m,n,k,group,config", [
    (1, 96, 256, 128, None),  # one row, split-K over the whole K
    (1, 40, 128, 32, dict(BLOCK_M=1, BLOCK_N=32, BLOCK_K=64, SPLIT_K=2, K_PER_SPLIT=64,
                          num_warps=4, num_stages=1)),  # one row, scales per element
    (1, 40, 256, 64, dict(BLOCK_M=1, BLOCK_N=32, BLOCK_K=64, SPLIT_K=2, K_PER_SPLIT=128,
                          num_warps=4, num_stages=1)),  # whole groups per tile, ragged N
    (1, 40, 448, 64, dict(BLOCK_M=1, BLOCK_N=32, BLOCK_K=64, SPLIT_K=2, K_PER_SPLIT=256,
                          SUB=2, num_warps=4, num_stages=1)),  # two tiles a step, K ragged
    (3, 40, 128, 32, None),  # a few rows, tl.dot, ragged N
    (5, 64, 192, 64, dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=64, SPLIT_K=3, K_PER_SPLIT=64,
                          num_warps=4, num_stages=1)),
    (5, 40, 192, 32, dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=64, SPLIT_K=3, K_PER_SPLIT=64,
                          num_warps=4, num_stages=1)),  # split tiles, scales per element
    (20, 48, 128, 32, None),  # the prefill shape: scales per element (group < BLOCK_K)
    (2, 32, 128, 128, dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=32, SPLIT_K=1, K_PER_SPLIT=128,
                           num_warps=4, num_stages=1)),  # several tiles per group
])
@pytest.mark.parametrize("symmetric", [False, True])
def test_int_gemm_matches_the_reference(bits, m, n, k, group, config, symmetric, device):
    qweight, scales, zeros, gen = _weights(k, n, bits, group, device, m * 100 + n + bits,
                                           symmetric)
    x = torch.randn(m, k, generator=gen).to(device)
    y = int_gemm.int_gemm(x, qweight, scales, zeros, bits, group, config=config)
    ref = int_gemm.int_gemm_ref(x, qweight, scales, zeros, bits, group)
    assert y.shape == (m, n) and y.dtype == x.dtype
    torch.testing.assert_close(y, ref, atol=1e-3, rtol=1e-4)
    locks = split_k.LOCKS.get(x.device)
    assert locks is None or not locks.any()  # split-K counters reset for the next launch
    dense = int_packing.dequantize(qweight.cpu(), scales.cpu(),
                                   None if zeros is None else zeros.cpu(), bits, group)
    torch.testing.assert_close(ref.cpu(), x.cpu() @ dense, atol=1e-4, rtol=1e-5)


_GEMV_SHAPES = [  # (n, k, group, config) of one row: the m = 1 rows above, plus SUB and 8 bits
    (96, 256, 128, None),
    (40, 128, 32, dict(BLOCK_M=1, BLOCK_N=32, BLOCK_K=64, SPLIT_K=2, K_PER_SPLIT=64,
                       num_warps=4, num_stages=1)),
    (40, 448, 64, dict(BLOCK_M=1, BLOCK_N=32, BLOCK_K=64, SPLIT_K=2, K_PER_SPLIT=256, SUB=2,
                       num_warps=4, num_stages=1)),
]


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("n,k,group,config", _GEMV_SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("symmetric", [False, True])
def test_the_gemv_with_codes_made_floats_by_bits(bits, n, k, group, config, dtype, symmetric,
                                                 device):
    """MAGIC (CORMORANT_INT_MAGIC=1): every code position of 4 and 8 bits, whole groups per
    tile (each code masked in place) and scales per element (shifted out), against the
    reference."""
    qweight, scales, zeros, gen = _weights(k, n, bits, group, device, n + k + bits, symmetric)
    x = torch.randn(1, k, generator=gen).to(device, dtype)
    scales = scales.to(dtype)
    zeros = None if zeros is None else zeros.to(dtype)
    cfg = dict(config or int_gemm.config_for(1, n, k, group, 4), MAGIC=True)
    y = int_gemm.int_gemm(x, qweight, scales, zeros, bits, group, config=cfg)
    ref = int_gemm.int_gemm_ref(x.float(), qweight, scales, zeros, bits, group)
    tol = 2 ** -7 if dtype == torch.bfloat16 else 1e-5
    assert ((y.float() - ref).abs() <= ref.abs() * tol + ref.abs().max() * tol).all()


@pytest.mark.parametrize("symmetric", [False, True])
def test_the_gemv_kernel_in_bf16(symmetric, device):
    qweight, scales, zeros, gen = _weights(256, 72, 4, 128, device, 7, symmetric)
    x = torch.randn(1, 256, generator=gen).to(device, torch.bfloat16)
    scales = scales.to(torch.bfloat16)
    zeros = None if zeros is None else zeros.to(torch.bfloat16)
    cfg = dict(BLOCK_M=1, BLOCK_N=32, BLOCK_K=128, SPLIT_K=2, K_PER_SPLIT=128, num_warps=4,
               num_stages=1)
    y = int_gemm.int_gemm(x, qweight, scales, zeros, 4, 128, config=cfg)
    ref = int_gemm.int_gemm_ref(x.float(), qweight, scales, zeros, 4, 128)
    assert y.dtype == torch.bfloat16
    # on the card the int4 GEMV sums each word's products in bf16 (PACKED): a few bf16
    # roundings a word, so the bound is relative to the largest output
    assert ((y.float() - ref).abs() <= (ref.abs() + ref.abs().max()) * 2 ** -7).all()
    # the split-K counters are left at zero: the next launch reduces as well
    assert not split_k.LOCKS[x.device].any()
    assert torch.equal(int_gemm.int_gemm(x, qweight, scales, zeros, 4, 128, config=cfg), y)


def test_decode_configs_split_k_to_fill_the_device():
    for m, block_m in ((1, 1), (8, 16)):  # one row: the GEMV; a few rows: the tile kernel
        cfg = int_gemm.config_for(m, 4096, 14336, 128, num_sms=132)
        assert cfg["BLOCK_M"] == block_m and cfg["SPLIT_K"] > 1
        assert cfg["K_PER_SPLIT"] % cfg["BLOCK_K"] == 0
        assert cfg["SPLIT_K"] * cfg["K_PER_SPLIT"] >= 14336
    assert int_gemm.config_for(256, 4096, 4096, 128, num_sms=132)["SPLIT_K"] == 1
    # the packed GEMV: at most 8 programs per SM (Llama-8B gate_up: 448 column tiles x 2)
    for n, k in ((28672, 4096), (6144, 4096), (4096, 14336)):
        fp32 = int_gemm.config_for(1, n, k, 128, num_sms=132)
        packed = int_gemm.config_for(1, n, k, 128, num_sms=132, packed=True)
        assert (n // 64) * packed["SPLIT_K"] <= 8 * 132
        assert packed["SPLIT_K"] * packed["K_PER_SPLIT"] >= k
        assert packed["SPLIT_K"] <= fp32["SPLIT_K"]
    assert int_gemm.config_for(1, 28672, 4096, 128, num_sms=132, packed=True)["SPLIT_K"] == 2
    assert int_gemm.config_for(1, 28672, 4096, 128, num_sms=132)["SPLIT_K"] == 3


def test_an_int4_layer_runs_the_kernel_as_its_cpu_reference(monkeypatch, device):
    from cormorant.layers import int_linear
    from cormorant.layers.int_linear import IntSpec, IntWeightMethod
    from cormorant.layers.linear import MergedColumnParallelLinear

    layer = MergedColumnParallelLinear(128, [32, 32]).to(device)
    method = IntWeightMethod(IntSpec("online", 4, 128), "gate_up", device, torch.float32)
    dense = torch.randn(64, 128, generator=torch.Generator().manual_seed(1)).to(device)
    layer.set_method(method)
    method.load_rows(layer, dense, 0)
    method.finalize(layer)
    x = torch.randn(3, 128, generator=torch.Generator().manual_seed(2)).to(device)
    monkeypatch.setattr(int_linear, "INT_KERNEL_DEVICE_TYPES", ())
    reference = layer(x)
    monkeypatch.setattr(int_linear, "INT_KERNEL_DEVICE_TYPES", ("cpu", "cuda"))
    calls = []
    real = int_gemm.int_gemm
    monkeypatch.setattr(int_gemm, "int_gemm", lambda *a, **k: calls.append(1) or real(*a, **k))
    torch.testing.assert_close(layer(x), reference, atol=1e-4, rtol=1e-4)
    assert calls  # the kernel did run


def test_an_int4_layer_folds_a_pending_norm_and_silu_into_its_gemv(monkeypatch, device):
    """One bf16 row: the layer's NormedInput / SiluMulInput go through the fused GEMV (the
    norm is not computed on its own) and give the unfused path's result within rounding."""
    from cormorant.layers import int_linear
    from cormorant.layers.activation import SiluAndMul, SiluMulInput
    from cormorant.layers.int_linear import IntSpec, IntWeightMethod
    from cormorant.layers.linear import RowParallelLinear
    from cormorant.layers.norm import NormedInput, RMSNorm

    monkeypatch.setattr(int_linear, "FUSED_PROLOGUE", True)  # CORMORANT_INT_FUSED=1
    gen = torch.Generator().manual_seed(3)
    layer = RowParallelLinear(256, 48, bias=False).to(device)
    method = IntWeightMethod(IntSpec("online", 4, 128), "o", device, torch.bfloat16)
    layer.set_method(method)
    method.load_rows(layer, torch.randn(48, 256, generator=gen).to(device), 0)
    method.finalize(layer)
    norm = RMSNorm(256, eps=1e-6).to(device, torch.bfloat16)
    with torch.no_grad():
        norm.weight.copy_(torch.rand(256, generator=gen) + 0.5)
    hidden = torch.randn(1, 256, generator=gen).to(device, torch.bfloat16)
    residual = torch.randn(1, 256, generator=gen).to(device, torch.bfloat16)
    gate_up = torch.randn(1, 512, generator=gen).to(device, torch.bfloat16)
    monkeypatch.setattr(int_linear, "INT_KERNEL_DEVICE_TYPES", ("cpu", "cuda"))
    # on CUDA the unfused norm overwrites its inputs (layers.norm): it gets copies
    unfused_in = NormedInput(norm, hidden.clone(), residual.clone())
    unfused = layer(unfused_in.tensor())
    silu_unfused = layer(SiluAndMul().compute(gate_up.clone()))
    monkeypatch.setattr(norm, "compute", lambda *a: pytest.fail("the norm ran unfused"))
    fused_in = NormedInput(norm, hidden, residual)
    fused = layer(fused_in)
    assert not fused_in.is_pending  # folded: the sum came back from the GEMV
    assert ((fused_in.residual.float() - unfused_in.residual.float()).abs()
            <= unfused_in.residual.float().abs() * 2 ** -7).all()
    big = unfused.float().abs().max()
    assert ((fused.float() - unfused.float()).abs() <= big * 2 ** -5).all()
    silu_fused = layer(SiluMulInput(SiluAndMul(), gate_up))
    big = silu_unfused.float().abs().max()
    assert ((silu_fused.float() - silu_unfused.float()).abs() <= big * 2 ** -5).all()


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("symmetric", [False, True])
def test_dequant_kernel_writes_the_reference_weight(bits, symmetric, device):
    """int_dequant (the many-rows path: a dense W, then a dense matmul) gives the reference's
    fp32 weight exactly, ragged K tile and N included."""
    k, n, group = 96, 136, 32  # 96 / (words per tile * codes per word) is ragged
    qweight, scales, zeros, _ = _weights(k, n, bits, group, device, bits + 7, symmetric)
    w = int_gemm.int_dequant(qweight, scales, zeros, bits, group, torch.float32)
    assert w.shape == (k, n)
    assert torch.equal(w, int_gemm.dequantize_ref(qweight, scales, zeros, bits, group))


_PROLOGUE_CONFIGS = [
    dict(BLOCK_M=1, BLOCK_N=32, BLOCK_K=64, SPLIT_K=3, K_PER_SPLIT=128, num_warps=4,
         num_stages=1),  # the squares summed across splits by the last one to finish
    dict(BLOCK_M=1, BLOCK_N=32, BLOCK_K=64, SPLIT_K=1, K_PER_SPLIT=384, SUB=2, num_warps=4,
         num_stages=1),  # one split: the program scales its own sums
]


@pytest.mark.parametrize("config", _PROLOGUE_CONFIGS + [dict(c, MAGIC=True)
                                                     for c in _PROLOGUE_CONFIGS])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("with_residual", [True, False])
@pytest.mark.parametrize("symmetric", [False, True])
def test_the_gemv_folds_in_the_residual_add_and_rms_norm(config, dtype, with_residual,
                                                         symmetric, device):
    from cormorant.kernels.rmsnorm import fused_add_rms_norm_ref, rms_norm_ref
    k, n = 384, 72  # three splits of 128; N ragged against BLOCK_N 32
    qweight, scales, zeros, gen = _weights(k, n, 4, 64, device, 11, symmetric)
    hidden = torch.randn(1, k, generator=gen).to(device, dtype)
    residual = torch.randn(1, k, generator=gen).to(device, dtype) if with_residual else None
    norm_w = (torch.rand(k, generator=gen) + 0.5).to(device, dtype)
    scales = scales.to(dtype)
    zeros = None if zeros is None else zeros.to(dtype)
    y, total = int_gemm.int_add_rms_norm_gemv(hidden, residual, norm_w, 1e-6, qweight, scales,
                                              zeros, 4, 64, config=dict(config))
    if residual is None:
        normed, ref_total = rms_norm_ref(hidden, norm_w, 1e-6), hidden
    else:
        normed, ref_total = fused_add_rms_norm_ref(hidden, residual, norm_w, 1e-6)
    ref = int_gemm.int_gemm_ref(normed.float(), qweight, scales, zeros, 4, 64)
    assert y.shape == (1, n) and y.dtype == dtype
    if dtype == torch.float32:  # the next residual, made as the unfused op makes it
        assert torch.equal(total, ref_total)
    else:  # one bf16 ulp: the interpreter's casts truncate (the card's round)
        assert ((total.float() - ref_total.float()).abs() <= ref_total.float().abs() * 2**-7).all()
    # the unfused path rounds s / rms * w to the dtype before the matmul; this does not
    tol = 2 ** -5 if dtype == torch.bfloat16 else 1e-5
    scale = ref.abs().max()
    assert ((y.float() - ref).abs() <= ref.abs() * tol + scale * tol).all()
    assert not split_k.LOCKS[hidden.device].any()
    again, _ = int_gemm.int_add_rms_norm_gemv(hidden, residual, norm_w, 1e-6, qweight, scales,
                                              zeros, 4, 64, config=dict(config))
    assert torch.equal(again, y)  # the split order is fixed: deterministic


@pytest.mark.parametrize("config", _PROLOGUE_CONFIGS + [dict(c, MAGIC=True)
                                                     for c in _PROLOGUE_CONFIGS])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_gemv_folds_in_silu_and_mul(config, dtype, device):
    from cormorant.kernels.activation import silu_and_mul_ref
    k, n = 384, 40
    qweight, scales, zeros, gen = _weights(k, n, 4, 128, device, 12)
    gate_up = torch.randn(1, 2 * k, generator=gen).to(device, dtype)
    scales, zeros = scales.to(dtype), zeros.to(dtype)
    y = int_gemm.int_silu_mul_gemv(gate_up, qweight, scales, zeros, 4, 128,
                                   config=dict(config))
    ref = int_gemm.int_gemm_ref(silu_and_mul_ref(gate_up).float(), qweight, scales, zeros, 4,
                                128)
    tol = 2 ** -5 if dtype == torch.bfloat16 else 1e-5  # bf16: inputs a truncated ulp apart
    assert ((y.float() - ref).abs() <= ref.abs() * tol + ref.abs().max() * tol).all()


@pytest.mark.parametrize("symmetric", [False, True])
def test_the_bit_trick_gives_what_the_conversion_gives(symmetric, device):
    """Each code masked in place as the fp32 2^23 + code * 2^sh, less 2^23 + zero * 2^sh,
    times x * 2^-sh, is exact: symmetric weights come out bit-identical to the int-to-float
    conversion it replaces (MAGIC=False), 4 and 8 bits. Asymmetric ones subtract zero * the
    inputs' sum per word instead (one more rounding): within a few fp32 ulps of it."""
    for bits in (4, 8):
        qweight, scales, zeros, gen = _weights(256, 40, bits, 64, device, 13 + bits,
                                               symmetric)
        x = torch.randn(1, 256, generator=gen).to(device)
        cfg = dict(BLOCK_M=1, BLOCK_N=32, BLOCK_K=64, SPLIT_K=2, K_PER_SPLIT=128,
                   num_warps=4, num_stages=1)
        a = int_gemm.int_gemm(x, qweight, scales, zeros, bits, 64, config=dict(cfg, MAGIC=True))
        b = int_gemm.int_gemm(x, qweight, scales, zeros, bits, 64,
                              config=dict(cfg, MAGIC=False))
        if symmetric:
            assert torch.equal(a, b)
        else:
            torch.testing.assert_close(a, b, rtol=0, atol=4e-6 * b.abs().max().item())


def test_the_int4_gemv_sums_in_packed_bf16_where_it_can(monkeypatch):
    """PACKED (_packed_word_sums, inline PTX) is chosen for int4 bf16 rows on CUDA (sm_80+)
    with whole groups per tile and no prologue, x 16-byte aligned; every other call keeps
    the fp32 form.
    Launches recorded, not run (the interpreter has no PTX); the card test below runs it."""
    launches = []

    class Recorder:
        def __getitem__(self, grid):
            return lambda *args, **kwargs: launches.append(kwargs["PACKED"])

    monkeypatch.setattr(int_gemm, "_int_gemv_kernel", Recorder())
    monkeypatch.setattr(split_k, "inline_ptx", lambda device: True)
    q, s, _, gen = _weights(256, 64, 4, 128, "cpu", 21, True)
    x = torch.randn(1, 257, generator=gen).to(torch.bfloat16)
    aligned, odd = x[:, :256], x[:, 1:]  # data_ptr 16-byte aligned / 2 bytes past it
    assert aligned.data_ptr() % 16 == 0 and odd.data_ptr() % 16 == 2
    q8, s8, _, _ = _weights(256, 64, 8, 128, "cpu", 22, True)
    s32 = s.to(torch.bfloat16).repeat_interleave(4, 0)  # groups of 32
    per_element = dict(BLOCK_M=1, BLOCK_N=32, BLOCK_K=64, SPLIT_K=2, K_PER_SPLIT=128,
                       num_warps=4, num_stages=1)
    nw = torch.ones(256, dtype=torch.bfloat16)
    calls = [
        (True, lambda: int_gemm.int_gemm(aligned, q, s.to(torch.bfloat16), None, 4, 128)),
        (False, lambda: int_gemm.int_gemm(odd, q, s.to(torch.bfloat16), None, 4, 128)),
        (False, lambda: int_gemm.int_gemm(aligned.float(), q, s, None, 4, 128)),
        (False, lambda: int_gemm.int_gemm(aligned.half(), q, s.half(), None, 4, 128)),
        (False, lambda: int_gemm.int_gemm(aligned, q8, s8.to(torch.bfloat16), None, 8, 128)),
        (False, lambda: int_gemm.int_gemm(aligned, q, s32, None, 4, 32,
                                          config=per_element)),  # groups smaller than a tile
        (False, lambda: int_gemm.int_add_rms_norm_gemv(aligned, None, nw, 1e-6, q,
                                                       s.to(torch.bfloat16), None, 4, 128)),
        (False, lambda: int_gemm.int_gemm(aligned, q, s.to(torch.bfloat16), None, 4, 128,
                                          config=dict(int_gemm.config_for(1, 64, 256, 128, 4),
                                                      PACKED=False))),
    ]
    for expected, call in calls:
        call()
        assert launches[-1] is expected
    for capability, packs in (((7, 5), False), ((8, 0), True), ((9, 0), True)):
        monkeypatch.setattr(split_k, "_capability", lambda index, c=capability: c)
        assert split_k.has_bf16x2(torch.device("cuda", 0)) is packs
    monkeypatch.setattr(split_k, "has_bf16x2", lambda device: False)  # a card before sm_80
    int_gemm.int_gemm(aligned, q, s.to(torch.bfloat16), None, 4, 128)
    assert launches[-1] is False
    monkeypatch.setattr(split_k, "has_bf16x2", lambda device: True)
    monkeypatch.setattr(split_k, "inline_ptx", lambda device: False)  # the CPU, interpreted
    int_gemm.int_gemm(aligned, q, s.to(torch.bfloat16), None, 4, 128)
    assert launches[-1] is False


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (inline PTX)")
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("n,k,config", [
    (4096, 4096, None),  # an H100's own split
    (200, 640, dict(BLOCK_M=1, BLOCK_N=64, BLOCK_K=128, SPLIT_K=2, K_PER_SPLIT=512, SUB=4,
                    num_warps=4, num_stages=2)),  # N ragged, the last split a ragged tile
])
def test_the_packed_gemv_on_the_card(symmetric, n, k, config):
    """The packed-bf16 sums (the default for int4 bf16 rows) against the reference and against
    the fp32 form (PACKED=False): within a few bf16 roundings of a word's sum, relative to the
    largest output; the same each launch."""
    qweight, scales, zeros, gen = _weights(k, n, 4, 128, "cuda", n + k, symmetric)
    x = torch.randn(1, k, generator=gen).to("cuda", torch.bfloat16)
    scales = scales.to(torch.bfloat16)
    zeros = None if zeros is None else zeros.to(torch.bfloat16)
    cfg = dict(config or int_gemm.config_for(1, n, k, 128, split_k.num_sms(x.device)))
    packed = int_gemm.int_gemm(x, qweight, scales, zeros, 4, 128, config=dict(cfg, PACKED=True))
    fp32 = int_gemm.int_gemm(x, qweight, scales, zeros, 4, 128, config=dict(cfg, PACKED=False))
    ref = int_gemm.int_gemm_ref(x.float(), qweight, scales, zeros, 4, 128)
    big = ref.abs().max()
    assert ((packed.float() - ref).abs() <= ref.abs() * 2 ** -7 + big * 2 ** -7).all()
    assert float((packed.float() - ref).norm() / ref.norm()) < 1e-2
    assert ((packed.float() - fp32.float()).abs() <= big * 2 ** -7).all()
    assert not torch.equal(packed, fp32)  # the packed form ran: its roundings differ
    assert torch.equal(int_gemm.int_gemm(x, qweight, scales, zeros, 4, 128,
                                         config=dict(cfg, PACKED=True)), packed)
