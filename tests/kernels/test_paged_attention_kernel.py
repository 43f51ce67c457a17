"""Paged attention kernel vs its PyTorch reference, and TritonAttention vs TorchAttention.

Random (never zero) fp32 inputs, shuffled block tables, batches mixing prefill chunks with a
cached prefix, plain prefills and decodes; head_dim 64 and 128; GQA ratios 1 and 3 (SmolLM2's
9/3) and 4; every launch shape (auto, small tiles, split-KV) the backend can pick.
"""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton", reason="triton is not installed (pip install triton)")

from cormorant.kernels.paged_attention import (  # noqa: E402
    CVT_BITS, CVT_F16_CAST, PagedAttentionConfig, choose_config, paged_attention,
    paged_attention_ref)
from cormorant.layers.attention import AttentionMetadata, TorchAttention  # noqa: E402
from cormorant.layers.triton_attention import TritonAttention  # noqa: E402

# query_lens, seq_lens: prefill with a 32-token prefix, two decodes (one at context 1), a plain
# prefill, and a prefill chunk ending mid-block.
MIXED = ([5, 1, 1, 20, 11], [37, 50, 1, 20, 45])
SMALL_TILES = PagedAttentionConfig(block_m=16, tile_size=16)
SPLIT = PagedAttentionConfig(block_m=16, tile_size=16, num_segments=4)
TOL = 1e-5


def _run(batch, scale, config, out=None):
    return paged_attention(batch.q, batch.kv_cache[0], batch.kv_cache[1], batch.query_start_loc,
                           batch.seq_lens, batch.block_tables, scale, max(batch.query_lens),
                           out=out, config=config)


def _ref(batch, scale):
    return paged_attention_ref(batch.q, batch.kv_cache[0], batch.kv_cache[1],
                               batch.query_start_loc, batch.seq_lens, batch.block_tables, scale)


@pytest.mark.parametrize("config", [None, SMALL_TILES, SPLIT], ids=["auto", "tile16", "split4"])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("heads", [(4, 4), (9, 3)], ids=["mha", "gqa3"])
def test_mixed_batch_matches_reference(heads, head_dim, config, device, make_batch, rel_err):
    batch = make_batch(*MIXED, *heads, head_dim, device=device, seed=head_dim)
    scale = head_dim ** -0.5
    assert rel_err(_run(batch, scale, config), _ref(batch, scale)) < TOL


@pytest.mark.parametrize("block_size", [8, 32])
def test_block_size_differs_from_tile(block_size, device, make_batch, rel_err):
    # Tiles spanning several cache blocks (8) and blocks spanning several tiles (32).
    batch = make_batch([3, 1, 17], [70, 33, 17], 8, 2, 64, block_size=block_size, device=device)
    for config in (SMALL_TILES, PagedAttentionConfig(block_m=32, tile_size=32)):
        assert rel_err(_run(batch, 0.125, config), _ref(batch, 0.125)) < TOL


@pytest.mark.parametrize("heads", [(2, 2), (6, 2), (8, 2)], ids=["mha", "gqa3", "gqa4"])
def test_decode_batch_auto_and_split(heads, device, make_batch, rel_err):
    # Pure decode at assorted context lengths, the shape a CUDA graph replays.
    seq_lens = [1, 16, 17, 130, 64, 200]
    batch = make_batch([1] * len(seq_lens), seq_lens, *heads, 128, device=device, seed=3)
    ref = _ref(batch, 0.09)
    auto = choose_config(heads[0], heads[1], 1, len(seq_lens), dtype=batch.q.dtype)
    assert auto.num_segments > 1  # a small batch takes the split-KV path
    for config in (None, SMALL_TILES, SPLIT):
        assert rel_err(_run(batch, 0.09, config), ref) < TOL


def test_the_f16_cast_decode_launch_caps_registers(monkeypatch):
    """The fp16-dot decode launch over an fp8 cache takes a register cap (128: four blocks an
    SM on sm_90); other launches keep ptxas's choice, and CORMORANT_ATTN_DECODE wins."""
    monkeypatch.delenv("CORMORANT_ATTN_DECODE", raising=False)
    assert choose_config(16, 8, 1, 256, kv_cvt=CVT_F16_CAST).max_registers == 128
    assert choose_config(16, 8, 1, 256, kv_cvt=CVT_BITS).max_registers == 0
    assert choose_config(16, 8, 300, 2, kv_cvt=CVT_F16_CAST).max_registers == 0
    monkeypatch.setenv("CORMORANT_ATTN_DECODE", "regs=0")
    assert choose_config(16, 8, 1, 256, kv_cvt=CVT_F16_CAST).max_registers == 0


def test_decode_launch_override(device, make_batch, rel_err, monkeypatch):
    """CORMORANT_ATTN_DECODE replaces fields of the decode launch (an A/B switch): the shape
    changes, prefill shapes do not, answers stay right, a malformed value is an error."""
    monkeypatch.setenv("CORMORANT_ATTN_DECODE", "tile=32,stages=3,regs=255")
    auto = choose_config(8, 2, 1, 6)
    assert (auto.tile_size, auto.num_stages, auto.max_registers) == (32, 3, 255)
    assert choose_config(8, 2, 40, 6).max_registers == 0
    batch = make_batch([1] * 4, [1, 17, 130, 64], 8, 2, 64, device=device, seed=2)
    assert rel_err(_run(batch, 0.09, None), _ref(batch, 0.09)) < TOL
    monkeypatch.setenv("CORMORANT_ATTN_DECODE", "tiles=32")
    with pytest.raises(ValueError, match="tile, warps, stages, regs"):
        choose_config(8, 2, 1, 6)


@pytest.mark.parametrize("config", [SMALL_TILES, SPLIT], ids=["tile16", "split4"])
def test_padding_rows_untouched_and_empty_sequences(config, device, make_batch, rel_err):
    # A sequence with no query rows (query_len 0) and three trailing rows owned by nobody.
    batch = make_batch([4, 0, 1], [40, 9, 23], 9, 3, 64, num_pad_tokens=3, device=device)
    sentinel = torch.full_like(batch.q, float("nan"))
    out = _run(batch, 0.125, config, out=sentinel.clone())
    real = batch.query_start_loc[-1].item()
    assert torch.isnan(out[real:]).all()
    assert not torch.isnan(out[:real]).any()
    assert rel_err(out[:real], _ref(batch, 0.125)[:real]) < TOL


@pytest.mark.parametrize("config", [None, SPLIT], ids=["auto", "split4"])
def test_head_dim_not_power_of_two(config, device, make_batch, rel_err):
    # head_dim 80 runs padded to 128 lanes; the padding must never leak into the output.
    batch = make_batch([2, 1, 1], [41, 18, 60], 4, 2, 80, device=device, seed=13)
    assert rel_err(_run(batch, 0.11, config), _ref(batch, 0.11)) < TOL


def test_single_sequence_long_prefill_with_prefix(device, make_batch, rel_err):
    # num_seqs == 1 arrives in the kernel as a specialised constant; 70 queries span several
    # query blocks of the auto (block_m 64) shape, all causal against a 60-token prefix.
    batch = make_batch([70], [130], 4, 4, 64, device=device, seed=7)
    assert rel_err(_run(batch, 0.125, None), _ref(batch, 0.125)) < TOL


def test_strided_query_view(device, make_batch, rel_err):
    # q as a slice of a fused qkv projection: rows are not contiguous.
    batch = make_batch(*MIXED, 9, 3, 64, device=device, seed=11)
    qkv = torch.randn(batch.q.shape[0], 15 * 64, device=device)
    q = qkv[:, :9 * 64].view(-1, 9, 64)
    q.copy_(batch.q)
    batch.q = q
    assert rel_err(_run(batch, 0.125, SMALL_TILES), _ref(batch, 0.125)) < TOL


def _metadata(batch) -> AttentionMetadata:
    return AttentionMetadata(
        slot_mapping=batch.slot_mapping, query_start_loc=batch.query_start_loc,
        seq_lens=batch.seq_lens, block_tables=batch.block_tables,
        max_query_len=max(batch.query_lens), max_seq_len=max(batch.seq_len_list),
        query_lens_cpu=batch.query_lens, seq_lens_cpu=batch.seq_len_list)


@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("heads", [(4, 4), (9, 3)], ids=["mha", "gqa3"])
@pytest.mark.parametrize("decode_only", [False, True], ids=["mixed", "decode"])
def test_backend_matches_torch_backend(heads, head_dim, decode_only, device, make_batch,
                                       rel_err):
    query_lens, seq_lens = ([1, 1, 1], [29, 70, 3]) if decode_only else MIXED
    batch = make_batch(query_lens, seq_lens, *heads, head_dim, num_pad_tokens=2,
                       device=device, seed=5)
    meta = _metadata(batch)
    cache_ref = batch.kv_cache.clone()
    ref = TorchAttention().forward(batch.q, batch.k, batch.v, cache_ref, meta, 0.1)
    out = TritonAttention().forward(batch.q, batch.k, batch.v, batch.kv_cache, meta, 0.1)
    real = sum(query_lens)
    assert torch.equal(batch.kv_cache, cache_ref)  # same slots written, nothing else
    assert rel_err(out[:real], ref[:real]) < TOL
