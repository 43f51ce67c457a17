"""config.json / generation_config.json -> ModelConfig, the registry's errors, and the
loader's refusal of checkpoints that do not match their config."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from cormorant.layers.attention import TorchAttention
from cormorant.models.hf_loader import model_config_from_hf_dict
from cormorant.models.loader import load_model, load_model_config, resolve_dtype
from cormorant.models.registry import get_model_class, supported_architectures
from model_test_utils import make_checkpoint

BASE = {"architectures": ["LlamaForCausalLM"], "hidden_size": 64, "intermediate_size": 96,
        "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 128,
        "max_position_embeddings": 4096}


def test_v4_style_rope_scaling_and_defaults():
    cfg = dict(BASE, rope_theta=1e6, rope_scaling={"type": "linear", "factor": 2.0})
    config = model_config_from_hf_dict(cfg)
    assert config.rope_theta == 1e6
    assert config.rope_scaling == (("factor", 2.0), ("rope_type", "linear"))
    assert config.num_kv_heads == 4 and config.head_dim == 16  # defaults from the heads
    assert not config.tie_word_embeddings and not config.attention_bias


def test_v5_rope_parameters_llama3():
    rope = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192,
            "rope_theta": 500000.0}
    config = model_config_from_hf_dict(dict(BASE, rope_parameters=rope))
    assert config.rope_theta == 500000.0
    assert config.rope_scaling_dict == {k: v for k, v in rope.items() if k != "rope_theta"}
    assert [k for k, _ in config.rope_scaling] == sorted(config.rope_scaling_dict)
    hash(config)  # stays hashable


def test_default_rope_type_is_no_scaling():
    config = model_config_from_hf_dict(dict(BASE, rope_parameters={"rope_type": "default",
                                                                   "rope_theta": 1e4}))
    assert config.rope_scaling is None


def test_eos_ids_merge_config_and_generation_config():
    config = model_config_from_hf_dict(dict(BASE, eos_token_id=2, bos_token_id=1),
                                       {"eos_token_id": [2, 7], "bos_token_id": 1})
    assert config.eos_token_ids == (2, 7) and config.bos_token_id == 1


def test_active_sliding_window_caps_context():
    mistral = model_config_from_hf_dict(dict(BASE, sliding_window=1024))
    qwen = model_config_from_hf_dict(dict(BASE, sliding_window=1024, use_sliding_window=False))
    assert mistral.max_position_embeddings == 1024 and qwen.max_position_embeddings == 4096


def test_qwen_architectures_imply_bias_and_qk_norm():
    qwen2 = model_config_from_hf_dict(dict(BASE, architectures=["Qwen2ForCausalLM"]))
    qwen3 = model_config_from_hf_dict(dict(BASE, architectures=["Qwen3ForCausalLM"],
                                           head_dim=32))
    assert qwen2.attention_bias and not qwen2.qk_norm
    assert qwen3.qk_norm and qwen3.head_dim == 32 and not qwen3.attention_bias


@pytest.mark.parametrize("bad, match", [
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "rope scaling type 'yarn'"),
    ({"hidden_act": "gelu"}, "activation"),
    ({"partial_rotary_factor": 0.5}, "partial rotary"),
])
def test_unsupported_config_features_raise(bad, match):
    with pytest.raises(ValueError, match=match):
        model_config_from_hf_dict(dict(BASE, **bad))


def test_unsupported_architecture_lists_supported(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(dict(BASE, architectures=["GPT2LMHeadModel"])))
    with pytest.raises(ValueError, match="GPT2LMHeadModel") as err:
        load_model_config(str(tmp_path))
    for name in ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM",
                 "Qwen3ForCausalLM"):
        assert name in str(err.value)
    assert set(supported_architectures()) >= {"LlamaForCausalLM", "Qwen3ForCausalLM"}
    with pytest.raises(ValueError, match="supported"):
        get_model_class("Nope")


def test_not_a_model_path(tmp_path):
    with pytest.raises(ValueError, match="config.json"):
        load_model_config(str(tmp_path))


def _rewrite_weights(tmp_path, edit) -> None:
    path = tmp_path / "model.safetensors"
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path, metadata={"format": "pt"})


@pytest.mark.parametrize("edit, match", [
    (lambda t: t.pop("model.layers.1.self_attn.k_proj.weight"), "lacks"),
    (lambda t: t.update({"model.layers.0.extra.weight": torch.zeros(2)}), "does not use"),
    (lambda t: t.update({"model.norm.weight": torch.ones(3)}), "model.norm.weight"),
    (lambda t: t.update({"model.layers.0.mlp.up_proj.weight": torch.ones(96, 3)}), "up_proj"),
])
def test_checkpoint_mismatch_raises(tmp_path, edit, match):
    make_checkpoint(tmp_path, "llama3-rope-untied")
    _rewrite_weights(tmp_path, edit)
    with pytest.raises(ValueError, match=match):
        load_model(str(tmp_path), torch.float32, "cpu", TorchAttention())


def test_tied_checkpoint_may_carry_lm_head(tmp_path):
    hf_model = make_checkpoint(tmp_path, "llama-tied")
    embed = hf_model.model.embed_tokens.weight.detach()
    _rewrite_weights(tmp_path, lambda t: t.update({"lm_head.weight": embed.clone()}))
    model, _ = load_model(str(tmp_path), torch.float32, "cpu", TorchAttention())
    assert model.lm_head.weight is model.model.embed_tokens.weight
    torch.testing.assert_close(model.lm_head.weight, embed)


def test_dtype_resolution(tmp_path):
    make_checkpoint(tmp_path, "llama-tied")
    cpu = torch.device("cpu")
    assert resolve_dtype("auto", str(tmp_path), cpu) == torch.float32
    assert resolve_dtype("bf16", str(tmp_path), cpu) == torch.bfloat16
    assert resolve_dtype(torch.float16, str(tmp_path), cpu) == torch.float16
    with pytest.raises(ValueError, match="dtype"):
        resolve_dtype("float8", str(tmp_path), cpu)
