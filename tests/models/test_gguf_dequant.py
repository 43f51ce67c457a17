"""Dequantization of each GGUF tensor type through a real file: what cormorant reads back
must equal gguf.quants.dequantize of the bytes written, in PyTorch's [rows, cols] shape."""
from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q
from gguf.quants import dequantize, quantize

from cormorant.models.gguf_loader import dequantize_tensor

ROWS, COLS = 6, 512  # COLS: a multiple of every block size (32, 256)
# Types gguf.quants can quantize, and how far the round trip may drift from N(0, 1) data
# (about half a quantization step of a block whose largest value is ~3).
QUANTIZABLE = {Q.F32: 0.0, Q.F16: 2e-3, Q.BF16: 2e-2, Q.Q8_0: 3e-2, Q.Q5_0: 0.25,
               Q.Q5_1: 0.2, Q.Q4_0: 0.5, Q.Q4_1: 0.4}
# K-quants: gguf.quants only dequantizes them, so blocks are random bytes with sane scales.
K_QUANTS = {Q.Q4_K: [(0, 2), (2, 4)], Q.Q6_K: [(208, 210)]}  # byte ranges of f16 scales


def _random_k_blocks(qtype: Q, rng: np.random.Generator) -> np.ndarray:
    block_size, type_size = gguf.GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, (ROWS, COLS // block_size, type_size), dtype=np.uint8)
    for start, end in K_QUANTS[qtype]:
        scale = rng.uniform(0.001, 0.01, (ROWS, COLS // block_size)).astype(np.float16)
        raw[..., start:end] = scale[..., None].view(np.uint8).reshape(
            ROWS, COLS // block_size, 2)
    return raw.reshape(ROWS, -1)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """One GGUF file holding a tensor of every type: {qtype: (original, stored bytes)}."""
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("dequant") / "types.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    cases = {}
    for qtype in QUANTIZABLE:
        original = rng.standard_normal((ROWS, COLS)).astype(np.float32)
        stored = quantize(original, qtype)
        writer.add_tensor(f"t.{qtype.name}", stored, raw_dtype=qtype)
        cases[qtype] = (original, stored)
    for qtype in K_QUANTS:
        stored = _random_k_blocks(qtype, rng)
        writer.add_tensor(f"t.{qtype.name}", stored, raw_dtype=qtype)
        cases[qtype] = (None, stored)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return {t.name: t for t in gguf.GGUFReader(str(path)).tensors}, cases


@pytest.mark.parametrize("qtype", list(QUANTIZABLE) + list(K_QUANTS), ids=lambda q: q.name)
def test_dequantize_matches_gguf(written, qtype):
    tensors, cases = written
    original, stored = cases[qtype]
    ours = dequantize_tensor(tensors[f"t.{qtype.name}"])
    assert ours.shape == (ROWS, COLS) and ours.dtype == torch.float32
    expected = torch.from_numpy(dequantize(stored, qtype).reshape(ROWS, COLS))
    assert torch.isfinite(expected).all()
    torch.testing.assert_close(ours, expected, atol=0, rtol=0)
    if original is not None:
        drift = (ours - torch.from_numpy(original)).abs().max().item()
        assert drift <= QUANTIZABLE[qtype]
