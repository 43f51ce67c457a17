"""TorchAttention's decode paths against a dense per-sequence reference.

Random fp32 caches with scattered blocks; pure-decode batches of 1, 5 and 16 rows (one padded
batch: context lengths differ, so the shorter rows are masked), 40 rows (chunks of
DECODE_CHUNK) and a mixed batch whose decodes are attended beside prefill chunks; GQA ratios
1 and 3 (SmolLM2's 9/3). The reference attends each sequence alone over its contiguous keys.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from model_test_utils import make_attention_metadata

from cormorant.layers.attention import TorchAttention

BLOCK = 4


def _batch(query_lens: list[int], seq_lens: list[int], heads: int, kv_heads: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    head_dim = 16
    blocks_per_seq = [-(-n // BLOCK) for n in seq_lens]
    order = torch.randperm(sum(blocks_per_seq) + 3, generator=gen).tolist()  # scattered
    tables, used = [], 0
    for n in blocks_per_seq:
        tables.append(order[used:used + n])
        used += n
    cache = torch.randn(2, len(order), BLOCK, kv_heads, head_dim, generator=gen)
    tokens = sum(query_lens)
    q = torch.randn(tokens, heads, head_dim, generator=gen)
    k = torch.randn(tokens, kv_heads, head_dim, generator=gen)
    v = torch.randn(tokens, kv_heads, head_dim, generator=gen)
    meta = make_attention_metadata(tables, seq_lens, query_lens, BLOCK)
    return q, k, v, cache, meta, tables


def _reference(q, cache, tables, query_lens, seq_lens, scale):
    """Each sequence alone: its keys and values laid out contiguously, causal SDPA."""
    outs, start = [], 0
    group = q.shape[1] // cache.shape[3]
    for table, query_len, seq_len in zip(tables, query_lens, seq_lens):
        keys = torch.cat([cache[0, b] for b in table])[:seq_len]  # [S, Hkv, D]
        values = torch.cat([cache[1, b] for b in table])[:seq_len]
        rows = torch.arange(seq_len - query_len, seq_len)[:, None]
        mask = torch.arange(seq_len)[None, :] <= rows
        out = F.scaled_dot_product_attention(
            q[start:start + query_len].transpose(0, 1),
            keys.repeat_interleave(group, 1).transpose(0, 1),
            values.repeat_interleave(group, 1).transpose(0, 1), attn_mask=mask, scale=scale)
        outs.append(out.transpose(0, 1))
        start += query_len
    return torch.cat(outs)


CASES = {
    "one-row": ([1], [37]),
    "five-rows": ([1] * 5, [1, 9, 16, 17, 40]),
    "sixteen-rows": ([1] * 16, [3 * i + 1 for i in range(16)]),
    "forty-rows": ([1] * 40, [(7 * i) % 50 + 1 for i in range(40)]),
    "mixed": ([1, 6, 1, 1, 12] + [1] * 18, [30, 20, 5, 44, 12] + list(range(2, 38, 2))),
}


@pytest.mark.parametrize("heads", [(4, 4), (9, 3)], ids=["mha", "gqa3"])
@pytest.mark.parametrize("case", list(CASES))
def test_decode_rows_match_dense_reference(case, heads):
    query_lens, seq_lens = CASES[case]
    q, k, v, cache, meta, tables = _batch(query_lens, seq_lens, *heads, seed=len(case))
    out = TorchAttention().forward(q, k, v, cache, meta, scale=0.3)
    # The step's own keys and values were written first, so the reference reads them too.
    expected = _reference(q, cache, tables, query_lens, seq_lens, 0.3)
    assert out.shape == q.shape
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)

