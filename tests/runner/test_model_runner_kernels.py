"""Layer dispatch (RMSNorm, rotary, SiLU-and-mul) and the Triton path of a whole model, on the
CPU: the reference runs for CPU tensors, and with the dispatch forced to the kernels (run by
Triton's interpreter) each layer, a full forward and a padded decode batch match it.

The forced path checks the wiring a GPU takes (argument order, in-place results, strided
q/k views, padding rows through the Triton attention kernel) without a GPU.
"""
from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():  # before any kernel module is imported
    os.environ.setdefault("TRITON_INTERPRET", "1")

from cormorant.layers import activation, norm, rotary  # noqa: E402
from cormorant.layers.activation import SiluAndMul  # noqa: E402
from cormorant.layers.norm import RMSNorm  # noqa: E402
from cormorant.layers.rotary import RotaryEmbedding  # noqa: E402

triton = pytest.importorskip("triton")

from cormorant.kernels import activation as k_activation  # noqa: E402
from cormorant.kernels import rmsnorm as k_rmsnorm  # noqa: E402
from cormorant.kernels import rotary as k_rotary  # noqa: E402
from cormorant.layers.attention import TorchAttention  # noqa: E402
from cormorant.layers.triton_attention import TritonAttention  # noqa: E402
from cormorant.models.random_init import build_random_model  # noqa: E402
from test_model_runner import (TINY, Blocks, _decode_batch, make_runner,  # noqa: E402
                               prepare)

# Triton must have been imported with the interpreter on: a test module collected earlier that
# imports transformers' model classes imports triton too (then run this file on its own, or
# set TRITON_INTERPRET=1 for the whole session, as tests/kernels/conftest.py does).
INTERPRETED = all(type(f).__name__ == "InterpretedFunction"
                  for f in (k_rmsnorm._rms_norm_kernel, triton.language.sum))
needs_interpreter = pytest.mark.skipif(
    torch.cuda.is_available() or not INTERPRETED,
    reason="forcing CPU tensors through the kernels needs TRITON_INTERPRET=1 before triton "
           "is first imported")


def force_kernels(monkeypatch, on: bool = True) -> None:
    """Make every layer's dispatch pick its kernel module (on) or the reference (off),
    whatever the device; monkeypatch restores the real rule after the test."""
    monkeypatch.setattr(norm, "norm_kernels", lambda x: k_rmsnorm if on else None)
    monkeypatch.setattr(rotary, "rotary_kernels", lambda x: k_rotary if on else None)
    monkeypatch.setattr(activation, "activation_kernels",
                        lambda x: k_activation if on else None)


def _rms(hidden=64):
    layer = RMSNorm(hidden, 1e-6)
    layer.weight.data.normal_(1.0, 0.1)
    return layer


def _rope(scaling=None):
    return RotaryEmbedding(16, 64, 10000.0, scaling)


def test_cpu_tensors_take_the_reference_path():
    x = torch.randn(3, 64)
    assert norm.norm_kernels(x) is None
    assert rotary.rotary_kernels(x) is None
    assert activation.activation_kernels(x) is None
    layer = _rms()
    xf = x.float()
    expected = layer.weight * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-6))
    torch.testing.assert_close(layer(x), expected)
    residual = torch.randn(3, 64)
    x_before, r_before = x.clone(), residual.clone()
    out, new_residual = layer(x, residual)
    assert torch.equal(x, x_before) and torch.equal(residual, r_before)  # nothing in place
    torch.testing.assert_close(new_residual, x + residual)
    gate_up = torch.randn(5, 2 * 24)
    torch.testing.assert_close(SiluAndMul()(gate_up),
                               torch.nn.functional.silu(gate_up[:, :24]) * gate_up[:, 24:])


@needs_interpreter
def test_forced_kernels_match_reference_layers(monkeypatch):
    gen = torch.Generator().manual_seed(0)
    layer = _rms()
    x, residual = torch.randn(6, 64, generator=gen), torch.randn(6, 64, generator=gen)
    ref_out, ref_res = layer(x, residual)
    ref_norm = layer(x)
    qkv = torch.randn(6, (4 + 2 + 2) * 16, generator=gen)  # strided q, k views of one tensor
    q, k = qkv[:, :64].view(6, 4, 16), qkv[:, 64:96].view(6, 2, 16)
    positions = torch.tensor([0, 5, 9, 17, 33, 63])
    ropes = [_rope(), _rope({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                             "high_freq_factor": 4.0, "original_max_position_embeddings": 16})]
    ref_rot = [rope(positions, q, k) for rope in ropes]
    head_norm = _rms(16)
    ref_head = head_norm(q)
    gate_up = torch.randn(6, 48, generator=gen)
    ref_act = SiluAndMul()(gate_up)

    force_kernels(monkeypatch)
    torch.testing.assert_close(layer(x.clone()), ref_norm)
    torch.testing.assert_close(head_norm(q.clone()), ref_head)  # 3-D rows
    torch.testing.assert_close(head_norm(q), ref_head)  # a strided view of qkv
    out, res = layer(x, residual)  # fused: in place, both returned
    assert out.data_ptr() == x.data_ptr() and res.data_ptr() == residual.data_ptr()
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(res, ref_res)
    for rope, (ref_q, ref_k) in zip(ropes, ref_rot):
        q2, k2 = rope(positions, q.clone(), k.clone())
        torch.testing.assert_close(q2, ref_q, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(k2, ref_k, rtol=1e-5, atol=1e-5)
    before_v = qkv[:, 96:].clone()
    rope_q, rope_k = ropes[0](positions, q, k)  # in place on the qkv views; v untouched
    assert rope_q.data_ptr() == q.data_ptr() and torch.equal(qkv[:, 96:], before_v)
    torch.testing.assert_close(SiluAndMul()(gate_up), ref_act, rtol=1e-6, atol=1e-6)


@needs_interpreter
def test_forced_kernel_model_matches_reference_model(monkeypatch):
    """A Qwen3-style model (q/k norm on strided views) through every kernel and the Triton
    attention backend equals the reference layers with TorchAttention, prefill and decode."""
    reference = make_runner()
    triton_model = build_random_model(TINY, torch.float32, "cpu", seed=0, std=0.2,
                                      attn_backend=TritonAttention())
    fast = make_runner(model=triton_model)
    fast.model.load_state_dict(reference.model.state_dict())
    hidden = []
    with torch.inference_mode():
        for runner in (fast, reference):
            force_kernels(monkeypatch, on=runner is fast)
            batch = _decode_batch(3, Blocks(200), runner)  # prefill through execute()
            inputs = runner.inputs.to_device(prepare(runner, batch))
            hidden.append(runner.model(inputs.input_ids, inputs.positions, runner.kv_caches,
                                       inputs.attn))
    torch.testing.assert_close(hidden[0], hidden[1], rtol=1e-4, atol=1e-4)


@needs_interpreter
def test_padded_decode_through_triton_attention(monkeypatch):
    """The kernel's padding contract: rows with query_len 1, seq_len 1 and slot -1 leave the
    real rows and the cache exactly as the unpadded batch does."""
    force_kernels(monkeypatch)
    model = build_random_model(TINY, torch.float32, "cpu", seed=1, std=0.2,
                               attn_backend=TritonAttention())
    runner = make_runner(model=model)
    graphs = runner.new_decode_graphs()
    graphs.use_eager()
    batch = _decode_batch(3, Blocks(200), runner)
    before = [c.clone() for c in runner.kv_caches]
    with torch.inference_mode():
        inputs = runner.inputs.to_device(prepare(runner, batch))
        expected = model(inputs.input_ids, inputs.positions, runner.kv_caches, inputs.attn)
        cache_eager = [c.clone() for c in runner.kv_caches]
        for cache, saved in zip(runner.kv_caches, before):
            cache.copy_(saved)
        hidden, _ = graphs.run(prepare(runner, batch, pad_to=graphs.bucket(batch.num_new_tokens)))
    torch.testing.assert_close(hidden, expected, rtol=1e-5, atol=1e-5)
    for got, want in zip(runner.kv_caches, cache_eager):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert isinstance(make_runner().model.model.layers[0].self_attn.attn_backend,
                      TorchAttention)
