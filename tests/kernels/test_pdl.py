"""kernels.pdl: when kernels launch with programmatic dependent launch, and that they still
compute the same with it off (the CPU and interpreter path; the card runs
benchmarks/pdl_check.py and tests/kernels/sm90_compile.py compiles the PDL variants)."""
import torch

from cormorant.kernels import pdl


def test_pdl_is_off_unless_switched_on_for_a_cuda_card(monkeypatch):
    monkeypatch.setattr(pdl, "SWITCH", False)
    assert not pdl.enabled(torch.device("cpu"))
    assert pdl.launch_options(torch.device("cpu")) == {"PDL": False}
    monkeypatch.setattr(pdl, "SWITCH", True)
    assert not pdl.enabled(torch.device("cpu"))  # CUDA only
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert not pdl.enabled(torch.device("cuda"))  # the interpreter cannot run its PTX


def test_triton_offers_the_launch_option():
    """The Triton this project pins has `launch_pdl` (else PDL stays off everywhere)."""
    assert pdl._triton_has_option()


def test_kernels_with_the_pdl_parameter_compute_as_before(device):
    """The GEMVs, norms and attention take PDL=False here: the same results as their
    references (each kernel's own tests check this too; this pins that the launch options
    reach them)."""
    from cormorant.kernels import gemv, rmsnorm
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 64, generator=gen).to(device)
    w = torch.randn(48, 64, generator=gen).to(device)
    torch.testing.assert_close(gemv.skinny_gemm(x, w), x @ w.t(), atol=1e-4, rtol=1e-4)
    nw = torch.rand(64, generator=gen).to(device) + 0.5
    torch.testing.assert_close(rmsnorm.rms_norm(x, nw, 1e-6), rmsnorm.rms_norm_ref(x, nw, 1e-6))
