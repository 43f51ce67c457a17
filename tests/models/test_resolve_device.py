"""The one device and dtype resolution (models.loader), which the engine builder, the benchmarks
and the embedder share: explicit choices win, "auto" follows the device and the checkpoint."""
from __future__ import annotations

import json

import pytest
import torch

from cormorant.models.loader import resolve_device, resolve_dtype

GPU = torch.device("cuda")  # a device object only: nothing is allocated on it


def _checkpoint(tmp_path, torch_dtype: str | None):
    config = {} if torch_dtype is None else {"torch_dtype": torch_dtype}
    (tmp_path / "config.json").write_text(json.dumps(config))
    return str(tmp_path)


@pytest.mark.parametrize("saved, bf16_ok, expected", [
    ("float16", True, torch.float16),
    ("bfloat16", True, torch.bfloat16),
    ("float32", True, torch.bfloat16),
    (None, True, torch.bfloat16),
    ("bfloat16", False, torch.float16),  # a GPU without bf16 gets its half dtype
    ("float16", False, torch.float16),
])
def test_auto_on_a_gpu_keeps_the_checkpoints_half_dtype(tmp_path, monkeypatch, saved, bf16_ok,
                                                        expected):
    # The card's bf16 support is the one fact this CPU machine cannot provide.
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16_ok)
    assert resolve_dtype("auto", _checkpoint(tmp_path, saved), GPU) == expected


def test_auto_without_a_checkpoint_is_the_gpus_half_dtype(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_dtype("auto", None, GPU) == torch.bfloat16
    assert resolve_dtype("auto", "random:tiny-qwen3", GPU) == torch.bfloat16  # no such dir
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_dtype("auto", None, GPU) == torch.float16


def test_cpu_and_explicit_choices(tmp_path):
    path = _checkpoint(tmp_path, "bfloat16")
    cpu = torch.device("cpu")
    assert resolve_dtype("auto", path, cpu) == torch.float32
    assert resolve_dtype("auto", None, cpu) == torch.float32
    assert resolve_dtype("fp16", path, GPU) == torch.float16
    assert resolve_dtype("float32", None, GPU) == torch.float32
    with pytest.raises(ValueError, match="unknown dtype 'int3'"):
        resolve_dtype("int3", None, cpu)


def test_devices():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            resolve_device("cuda:0")


def test_the_engine_builder_resolves_through_the_loader(tiny_llama):
    """One resolution: the builder's dtype is the loader's (float32 on this CPU)."""
    from cormorant import LLM

    llm = LLM(tiny_llama, device="cpu", num_kv_blocks=8)
    assert llm.engine.runner.dtype == resolve_dtype("auto", tiny_llama, torch.device("cpu"))
    assert next(llm.engine.runner.model.parameters()).dtype == torch.float32
