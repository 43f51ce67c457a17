"""GGUF loading: tiny GGUFs written like llama.cpp does (permuted llama q/k, rope_freqs,
tied output, Qwen biases and q/k norms) must reproduce the transformers model they came from;
the q/k un-permutation must invert llama.cpp's permutation."""
from __future__ import annotations

import pytest
import torch

from cormorant.layers.attention import TorchAttention
from cormorant.models.gguf_loader import unpermute_rows
from cormorant.models.loader import load_model, load_model_config
from gguf_test_utils import llama_cpp_permute, write_gguf
from model_test_utils import PagedRunner, make_hf_model, reference_logits

PROMPTS = [[5, 17, 99, 3, 42, 8, 9], [7, 1, 2, 3, 4, 5, 6, 8, 9, 10, 11, 12, 13]]


@pytest.mark.parametrize("num_heads, num_kv_heads", [(4, 4), (4, 2), (6, 1)])
def test_unpermute_inverts_llama_cpp_permute(num_heads, num_kv_heads):
    head_dim = 8
    w = torch.randn(num_kv_heads * head_dim, 5)
    permuted = llama_cpp_permute(w.numpy(), num_heads, num_kv_heads)
    assert not torch.equal(torch.from_numpy(permuted), w)
    torch.testing.assert_close(unpermute_rows(torch.from_numpy(permuted), num_kv_heads), w,
                               atol=0, rtol=0)


@pytest.mark.parametrize("case, arch", [
    ("llama3-rope-untied", "llama"),   # permuted q/k, rope_freqs, output.weight present
    ("llama-linear-rope", "llama"),     # rope scaling from metadata
    ("qwen2-bias", "qwen2"),            # biases, not permuted
    ("qwen3-qknorm", "qwen3"),          # q/k norms, head_dim from key_length, tied
])
def test_gguf_logits_match_source_model(tmp_path, case, arch):
    hf_model = make_hf_model(case)
    path = tmp_path / "tiny.gguf"
    write_gguf(hf_model, path, arch)
    model, config = load_model(str(path), torch.float32, "cpu", TorchAttention())
    assert config.architecture == type(hf_model).__name__
    assert config.tie_word_embeddings == hf_model.config.tie_word_embeddings
    assert config.eos_token_ids == (2, 5) and config.bos_token_id == 1
    runner = PagedRunner(model, config, num_seqs=2, max_len=16)
    ours = runner.step(dict(enumerate(PROMPTS)))
    decoded = runner.step({0: [3], 1: [4]})
    for i, prompt in enumerate(PROMPTS):
        ref = reference_logits(hf_model, prompt + [3 + i])
        torch.testing.assert_close(torch.cat([ours[i], decoded[i]]), ref, atol=1e-4, rtol=0)


def test_gguf_config_is_cheap_and_matches(tmp_path):
    hf_model = make_hf_model("qwen3-qknorm")
    path = tmp_path / "tiny.gguf"
    write_gguf(hf_model, path, "qwen3")
    config = load_model_config(str(path))
    assert (config.num_layers, config.num_heads, config.num_kv_heads, config.head_dim) == (
        2, 4, 2, 32)
    assert config.qk_norm and not config.attention_bias
    assert config.vocab_size == 128 and config.max_position_embeddings == 256
    assert config == load_model(str(path), torch.float32, "cpu", TorchAttention())[1]


def test_unsupported_gguf_architecture(tmp_path):
    path = tmp_path / "tiny.gguf"
    write_gguf(make_hf_model("llama-tied"), path, "llama", architecture_name="gpt2")
    with pytest.raises(ValueError, match="'gpt2'.*llama, qwen2, qwen3"):
        load_model_config(str(path))
