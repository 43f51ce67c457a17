"""The layer contracts the decoder relies on, on the CPU: a deferred norm or SiLU consumed by a
linear layer gives what the eager layers give (the residual stream included), and every
attention backend declares each path of the protocol."""
from __future__ import annotations

import pytest
import torch

from cormorant.layers.activation import SiluAndMul
from cormorant.layers.attention import AttentionBackend, TorchAttention
from cormorant.layers.linear import MergedColumnParallelLinear, RowParallelLinear
from cormorant.layers.norm import RMSNorm


def _filled(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(seed)
    for param in module.parameters():
        param.data.copy_(torch.randn(param.shape, generator=gen) * 0.3 + 1.0)
    return module


def _norms(seed: int = 0) -> tuple[RMSNorm, RMSNorm]:
    eager = _filled(RMSNorm(64, 1e-6), seed)
    deferred = RMSNorm(64, 1e-6, deferred=True)
    deferred.load_state_dict(eager.state_dict())
    return eager, deferred


@pytest.mark.parametrize("with_residual", [False, True])
@pytest.mark.parametrize("residual_first", [False, True])
def test_deferred_norm_into_a_linear_equals_the_eager_layers(with_residual, residual_first):
    eager, deferred = _norms()
    linear = _filled(MergedColumnParallelLinear(64, [24, 40], bias=True), 1)
    gen = torch.Generator().manual_seed(2)
    hidden = torch.randn(5, 64, generator=gen)
    residual = torch.randn(5, 64, generator=gen) if with_residual else None
    if residual is None:
        want_out, want_sum = linear(eager(hidden)), hidden
    else:
        normed, want_sum = eager(hidden, residual)
        want_out = linear(normed)
    x = deferred(hidden, residual)
    assert x.is_pending  # nothing computed until a consumer (or .residual) asks
    if residual_first:  # read the stream first: the norm runs unfused, the linear reuses it
        torch.testing.assert_close(x.residual, want_sum)
        assert not x.is_pending
    torch.testing.assert_close(linear(x), want_out)
    torch.testing.assert_close(x.residual, want_sum)
    if residual is None:
        assert x.residual is hidden


def test_deferred_silu_into_a_row_parallel_linear_equals_the_eager_layers():
    down = _filled(RowParallelLinear(24, 64, bias=True), 3)
    gate_up = torch.randn(4, 48, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(down(SiluAndMul(deferred=True)(gate_up)),
                               down(SiluAndMul()(gate_up)))


def test_backends_declare_every_path():
    backends = [TorchAttention()]
    try:
        from cormorant.layers.triton_attention import TritonAttention
        backends.append(TritonAttention())
    except ImportError:
        pass
    for backend in backends:
        assert isinstance(backend, AttentionBackend)  # forward, forward_prepped, the flag
    assert [b.supports_cuda_graphs for b in backends] == [False, True][:len(backends)]
