"""GGUF weights kept quantized on the CPU (layers.gguf_linear): the int4 codes unpack exactly,
each format's matmul stays within a stated tolerance of its dequantized reference, and a tiny
model written with the gguf package's own quantizers gives the dequantized model's logits
(within tolerance) with the methods the file's types call for."""
from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q
from gguf.quants import dequantize, quantize

from cormorant.layers.attention import TorchAttention
from cormorant.layers.gguf_blocks import BlockTensor, unpack_int4
from cormorant.layers.gguf_linear import Int4CpuMethod, Int4PairCpuMethod, gguf_method_for
from cormorant.layers.linear import ColumnParallelLinear, DenseLinearMethod, QKVParallelLinear
from cormorant.models.loader import load_model
from gguf_test_utils import write_gguf
from model_test_utils import PagedRunner, make_hf_model

ROWS, COLS = 48, 512
K_SCALES = {Q.Q4_K: [(0, 2), (2, 4)], Q.Q6_K: [(208, 210)]}  # f16 scale bytes per block
# Relative error of y = x @ W^T against the dequantized W, |y - ref| / max|ref|: int4 keeps
# the codes (only bf16 activations, scales and output round: ~2^-8); the int4 pair
# requantizes to two 4-bit terms per group of 32 (near 8-bit steps, plus the same rounding).
TOLERANCE = {Q.Q4_0: 0.02, Q.Q4_1: 0.02, Q.Q4_K: 0.02, Q.Q8_0: 0.03, Q.Q6_K: 0.03,
             Q.F16: 0.0, Q.BF16: 0.0}


def _blocks(qtype: Q, rng: np.random.Generator) -> np.ndarray:
    """[ROWS, bytes] blocks: the gguf package's quantizer where it has one, else (K-quants)
    random bytes with sane f16 scales, as llama.cpp's own files hold."""
    if qtype not in K_SCALES:
        return quantize(rng.standard_normal((ROWS, COLS)).astype(np.float32), qtype)
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, (ROWS, COLS // block, size), dtype=np.uint8)
    for start, end in K_SCALES[qtype]:
        scale = rng.uniform(0.001, 0.01, (ROWS, COLS // block)).astype(np.float16)
        raw[..., start:end] = scale[..., None].view(np.uint8).reshape(ROWS, COLS // block, 2)
    return raw.reshape(ROWS, -1)


def _block_tensor(qtype: Q, seed: int = 0) -> BlockTensor:
    raw = _blocks(qtype, np.random.default_rng(seed))
    if qtype in (Q.F16, Q.BF16):
        raw = raw.view(np.uint8).reshape(ROWS, -1)
    return BlockTensor(qtype, torch.from_numpy(np.ascontiguousarray(raw)), COLS)


@pytest.mark.parametrize("qtype", [Q.Q4_0, Q.Q4_1, Q.Q4_K], ids=lambda q: q.name)
def test_int4_unpacking_is_exact(qtype):
    t = _block_tensor(qtype)
    codes, scale, offset = unpack_int4(t)
    assert codes.dtype == torch.uint8 and int(codes.max()) <= 15
    ours = (scale.repeat_interleave(32, 1) * codes.float()
            + offset.repeat_interleave(32, 1))
    ref = torch.from_numpy(dequantize(t.raw.numpy(), qtype).reshape(ROWS, COLS))
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("qtype", list(TOLERANCE), ids=lambda q: q.name)
def test_method_matmul_within_tolerance_of_dequantized(qtype):
    t = _block_tensor(qtype)
    method = gguf_method_for({qtype})
    expected = {Q.Q4_0: Int4CpuMethod, Q.Q4_1: Int4CpuMethod, Q.Q4_K: Int4CpuMethod,
                Q.Q8_0: Int4PairCpuMethod, Q.Q6_K: Int4PairCpuMethod}.get(qtype)
    assert type(method) is expected if expected else method is None
    # Loaded in two row slices, as the shards of a fused layer are.
    layer = ColumnParallelLinear(COLS, ROWS, bias=False, method=method)
    with torch.no_grad():
        layer.weight_loader(layer.weight, t)
        layer.method.finalize(layer)
    x = torch.randn(5, COLS)
    ref = x @ t.dequantize().t()
    err = (layer(x) - ref).abs().max().item() / ref.abs().max().item()
    assert err <= TOLERANCE[qtype] + 1e-6, f"{qtype.name}: relative error {err:.4f}"


def test_fused_layer_of_mixed_types_takes_the_int4_pair():
    """q and k in Q4_1, v in Q8_0 (as llama.cpp's mixed files do): one int4-pair layer, each
    shard's rows where they belong."""
    assert isinstance(gguf_method_for({Q.Q4_1, Q.Q8_0}), Int4PairCpuMethod)
    layer = QKVParallelLinear(COLS, 16, 2, 1, method=gguf_method_for({Q.Q4_1, Q.Q8_0}))
    parts = {"q": _block_tensor(Q.Q4_1, 1).rows(0, 32), "k": _block_tensor(Q.Q4_1, 2).rows(0, 16),
             "v": _block_tensor(Q.Q8_0, 3).rows(0, 16)}
    with torch.no_grad():
        for shard, t in parts.items():
            layer.weight_loader(layer.weight, t, shard)
        layer.method.finalize(layer)
    x = torch.randn(3, COLS)
    ref = x @ torch.cat([parts[s].dequantize() for s in "qkv"]).t()
    assert (layer(x) - ref).abs().max() / ref.abs().max() < 0.03


@pytest.mark.parametrize("qtypes", [
    {"attn": Q.Q4_0, "ffn": Q.Q4_1},
    {"attn_v": Q.Q8_0, "ffn_down": Q.Q8_0, "": Q.Q4_1},  # mixed; token_embd too
], ids=["q4_0-q4_1", "mixed-q8_0-embedding"])
def test_tiny_quantized_model_matches_dequantized_reference(tmp_path, qtypes):
    path = tmp_path / "tiny.gguf"
    write_gguf(make_hf_model("qwen3-qknorm"), path, "qwen3", qtypes=qtypes)
    prompts = [[5, 17, 99, 3, 42, 8, 9], [7, 1, 2, 3, 4]]
    logits = {}
    for quantization in ("none", "gguf"):
        model, config = load_model(str(path), torch.float32, "cpu", TorchAttention(),
                                   quantization=quantization)
        runner = PagedRunner(model, config, num_seqs=2, max_len=16)
        prefill = runner.step(dict(enumerate(prompts)))
        decode = runner.step({0: [3], 1: [4]})
        logits[quantization] = torch.cat([prefill[0], decode[0], prefill[1], decode[1]])
        methods = {type(m.method) for m in model.model.modules() if hasattr(m, "method")}
        if quantization == "gguf":
            assert type(model.lm_head).__name__ == "RescoredLMHead"
            assert DenseLinearMethod not in methods and Int4CpuMethod in methods
            assert (Int4PairCpuMethod in methods) == (Q.Q8_0 in qtypes.values())
        else:
            assert methods == {DenseLinearMethod}
    ref, ours = logits["none"], logits["gguf"]
    # Random weights give near-flat logits (argmax ties), so the bound is on the values.
    assert 0 < (ours - ref).abs().max() / ref.abs().max() < 0.03


def test_rescored_lm_head_is_exact_where_it_matters():
    from cormorant.layers.embedding import ParallelLMHead
    from cormorant.layers.rescored_head import RESCORE_TOP, RescoredLMHead

    torch.manual_seed(0)
    dense = ParallelLMHead(4096, 128)
    dense.weight.data.normal_(0, 0.5)
    head = RescoredLMHead(dense)
    assert head.weight is dense.weight  # shared (tied), not copied
    hidden = torch.randn(3, 128)
    ref, ours = dense(hidden), head(hidden)
    top = ref.topk(RESCORE_TOP // 2, dim=-1).indices
    torch.testing.assert_close(ours.gather(-1, top), ref.gather(-1, top), atol=1e-5, rtol=1e-5)
    assert torch.equal(ours.argmax(-1), ref.argmax(-1))
    tail = (ours - ref).abs().max().item()
    assert 0 < tail < 0.02 * ref.abs().max().item()  # the tail: bf16 steps, within tolerance


def test_the_default_is_the_exact_path_and_the_fast_path_is_asked_for_by_name():
    """auto -> none: a user who asks for nothing gets transformers' tokens; gguf is opt-in."""
    from cormorant.models.loader import resolve_quantization

    cpu = torch.device("cpu")
    assert resolve_quantization("auto", cpu) == "none"
    assert resolve_quantization("gguf", cpu) == "gguf"
    with pytest.raises(ValueError, match="CPU only"):
        resolve_quantization("gguf", torch.device("meta"))
    with pytest.raises(ValueError, match="does not apply to GGUF files"):
        resolve_quantization("fp8", cpu)
