"""The Embedder engine object with the real all-MiniLM-L6-v2: concurrent requests share
forward passes, chunked batches keep every result in place, and the vectors equal
sentence-transformers'."""
from __future__ import annotations

import asyncio

import pytest
import torch

from cormorant.frontend.embedder import Embedder
from models.test_bert import (TEXTS, cosine_distance, minilm_dir,
                              sentence_transformers_reference)


@pytest.fixture(scope="module")
def minilm():
    embedder = Embedder.from_path(minilm_dir(), name="minilm", device="cpu")
    yield embedder
    embedder.shutdown()


@pytest.fixture(scope="module")
def reference():
    return sentence_transformers_reference(minilm_dir(), TEXTS)


def test_tokenizer_adds_specials_and_no_fixed_padding(minilm):
    ids = minilm.tokenize("hello world")
    assert ids[0] == 101 and ids[-1] == 102 and len(ids) == 4  # [CLS] hello world [SEP]
    assert minilm.max_model_len == 512 and not minilm.is_classifier


def test_concurrent_requests_share_forward_passes(minilm, reference):
    seqs = [minilm.tokenize(t) for t in TEXTS]

    async def many():
        return await asyncio.gather(*(minilm.embed([s]) for s in seqs * 2))

    before = minilm.num_forward_passes
    results = asyncio.run(many())
    num_forwards = minilm.num_forward_passes - before
    assert num_forwards < len(results), num_forwards
    vectors = [r[0] for r in results]
    assert float(cosine_distance(vectors, torch.cat([reference, reference])).max()) < 1e-5


def test_small_batches_keep_results_in_order(reference):
    embedder = Embedder.from_path(minilm_dir(), device="cpu", max_batch_tokens=1,
                                  max_batch_size=2)
    try:
        seqs = [embedder.tokenize(t) for t in TEXTS]
        vectors = asyncio.run(embedder.embed(seqs))
        assert embedder.num_forward_passes == 2  # 4 sequences, 2 per chunk
        assert float(cosine_distance(vectors, reference).max()) < 1e-5
        with pytest.raises(ValueError, match="no classification head"):
            asyncio.run(embedder.classify(seqs))
    finally:
        embedder.shutdown()
