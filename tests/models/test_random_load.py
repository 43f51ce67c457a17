"""load_model(load_format="random"): the architecture from config.json or GGUF metadata, no
weight read, seeded random weights (never zeros, the same for the same seed); and the
load_format check."""
from __future__ import annotations

import pytest
import torch

from cormorant.layers.attention import TorchAttention
from cormorant.models.loader import load_model, load_model_config
from gguf_test_utils import write_gguf
from model_test_utils import make_checkpoint, make_hf_model


def _config_only(tmp_path, case: str = "qwen3-qknorm"):
    """A directory holding only config.json (the checkpoint's weights saved, then deleted)."""
    hf_model = make_checkpoint(tmp_path, case)
    for path in tmp_path.glob("*.safetensors"):
        path.unlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "generation_config.json"]
    return str(tmp_path), hf_model


def _params(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def test_random_weights_from_config_json_are_seeded_and_never_zero(tmp_path):
    path, hf_model = _config_only(tmp_path)
    model, config = load_model(path, torch.float32, "cpu", TorchAttention(),
                               load_format="random", seed=3)
    assert config == load_model_config(path)
    assert config.architecture == "Qwen3ForCausalLM" and config.qk_norm
    first = _params(model)
    assert first and all(bool((p != 0).all()) for p in first.values())
    again = _params(load_model(path, torch.float32, "cpu", TorchAttention(),
                               load_format="random", seed=3)[0])
    other = _params(load_model(path, torch.float32, "cpu", TorchAttention(),
                               load_format="random", seed=4)[0])
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not any(torch.equal(first[k], other[k]) for k in first)
    embed = hf_model.model.embed_tokens.weight
    assert first["model.embed_tokens.weight"].shape == embed.shape


def test_random_ignores_the_checkpoint_weights(tmp_path):
    make_checkpoint(tmp_path, "llama-tied")
    real = _params(load_model(str(tmp_path), torch.float32, "cpu")[0])
    rand = _params(load_model(str(tmp_path), torch.float32, "cpu", load_format="random")[0])
    assert real.keys() == rand.keys()
    assert not torch.equal(real["model.embed_tokens.weight"], rand["model.embed_tokens.weight"])


def test_random_weights_from_gguf_metadata(tmp_path):
    hf_model = make_hf_model("qwen2-bias")
    path = tmp_path / "tiny.gguf"
    write_gguf(hf_model, path, "qwen2")
    model, config = load_model(str(path), torch.float32, "cpu", load_format="random", seed=1)
    assert config == load_model_config(str(path)) and config.attention_bias
    ours = dict(model.named_parameters())["model.embed_tokens.weight"]
    theirs = hf_model.model.embed_tokens.weight
    assert ours.shape == theirs.shape and not torch.allclose(ours, theirs)
    assert all(bool((p != 0).all()) for p in model.parameters())


def test_unknown_load_format_names_the_accepted_ones(tmp_path):
    path, _ = _config_only(tmp_path)
    with pytest.raises(ValueError, match=r"'dummy'.*auto, random"):
        load_model(path, torch.float32, "cpu", load_format="dummy")
