"""The real SmolLM2-135M-Instruct Q4_1 GGUF: cormorant's logits must match transformers'
own GGUF loading (fp32). Slow: transformers takes ~15 s. (Load time is a benchmark figure, not
a test: it varies with the machine's load.)"""
from __future__ import annotations

import os

import pytest
import torch

from cormorant.layers.attention import TorchAttention
from cormorant.models.loader import load_model
from model_test_utils import PagedRunner

pytestmark = pytest.mark.slow
# "<|im_start|>user\nWhat is the capital of France?" and a second, shorter prompt.
PROMPTS = [[1, 4093, 198, 1780, 314, 260, 3575, 282, 4649, 47], [1, 9690, 198, 2683, 359]]


@pytest.fixture(scope="module")
def cormorant_model(smollm2_gguf_path):
    model, config = load_model(smollm2_gguf_path, torch.float32, "cpu", TorchAttention())
    return model, config


@pytest.fixture(scope="module")
def hf_model(smollm2_gguf_path):
    from transformers import AutoModelForCausalLM
    directory, name = os.path.split(smollm2_gguf_path)
    return AutoModelForCausalLM.from_pretrained(directory, gguf_file=name,
                                                dtype=torch.float32).eval()


def test_config(cormorant_model):
    _, config = cormorant_model
    assert config.architecture == "LlamaForCausalLM"
    assert (config.num_layers, config.num_heads, config.num_kv_heads, config.head_dim) == (
        30, 9, 3, 64)
    assert config.tie_word_embeddings and config.vocab_size == 49152
    assert config.rope_theta == 100000.0 and config.eos_token_ids == (2,)


@torch.no_grad()
def test_logits_match_transformers_gguf(cormorant_model, hf_model):
    model, config = cormorant_model
    runner = PagedRunner(model, config, num_seqs=2, max_len=32, block_size=16)
    prefill = runner.step(dict(enumerate(PROMPTS)))
    greedy = {i: [int(prefill[i][-1].argmax())] for i in range(2)}
    decode = runner.step(greedy)
    for i, prompt in enumerate(PROMPTS):
        ref = hf_model(torch.tensor([prompt + greedy[i]])).logits[0].float()
        ours = torch.cat([prefill[i], decode[i]])
        assert (ours - ref).abs().max().item() < 1e-3
        assert torch.equal(ours.argmax(-1), ref.argmax(-1))
