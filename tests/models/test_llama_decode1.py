"""The lean one-row CPU decode step (models.llama_decode1) is the layers' own path, bit for bit.

A tiny Llama written as a quantized GGUF (Q4_1, and a mix with Q8_0 parts that take the int4
pair) is loaded with `--quantization gguf` twice; both copies prefill the same prompt and
decode the same tokens, one through the lean step and one through the layers. Logits, the KV
cache must be equal (torch.equal), and the lean step must really
have run on every decode step, its blocks consecutive (read in place) or not (gathered).
The compiled step (kernels.cpu_decode) is switched off here: tests/models/test_cpu_decode.py.
"""
from __future__ import annotations

import pytest
import torch
from gguf import GGMLQuantizationType as Q

from cormorant.kernels import cpu_decode
from cormorant.layers.attention import TorchAttention
from cormorant.models.llama_decode1 import LeanDecode
from cormorant.models.loader import load_model
from gguf_test_utils import write_gguf
from model_test_utils import PagedRunner, make_hf_model

PROMPT = [5, 17, 99, 3, 42, 8, 9, 11, 2]
DECODE = [3, 77, 12, 64, 1, 100, 31]


@pytest.fixture(autouse=True)
def python_step(monkeypatch):
    monkeypatch.setenv(cpu_decode.ENV, "python")


def _load(path, quantization: str = "gguf"):
    model, config = load_model(str(path), torch.float32, "cpu", TorchAttention(),
                               quantization=quantization)
    return model, config


def _counting(monkeypatch) -> dict[str, int]:
    """Count the lean step's runs and how many of them it took."""
    calls = {"run": 0, "taken": 0}
    original = LeanDecode.run

    def run(self, *args):
        out = original(self, *args)
        calls["run"] += 1
        calls["taken"] += out is not None
        return out
    monkeypatch.setattr(LeanDecode, "run", run)
    return calls


def _decode_both(path, block_tables: list[list[int]] | None) -> tuple[list, list]:
    """(lean runner, layers runner) after the same prefill and decodes; their logits."""
    runners, logits = [], []
    for lean in (True, False):
        model, config = _load(path)
        model.model.lean_decode = lean
        runner = PagedRunner(model, config, num_seqs=2, max_len=32)  # 16 blocks of 4
        if block_tables is not None:
            runner.block_tables = block_tables
        out = [runner.step({0: PROMPT})[0]]
        out += [runner.step({0: [token]})[0] for token in DECODE]
        runners.append(runner)
        logits.append(torch.cat(out))
    return runners, logits


@pytest.mark.parametrize("qtypes", [
    {"": Q.Q4_1},
    {"attn_v": Q.Q8_0, "ffn_down": Q.Q8_0, "": Q.Q4_0},  # the int4 pair on v and down
], ids=["q4_1", "mixed-pair"])
def test_lean_decode_step_is_bit_identical_to_the_layers(tmp_path, monkeypatch, qtypes):
    path = tmp_path / "tiny.gguf"
    write_gguf(make_hf_model("llama-tied"), path, "llama", qtypes=qtypes)
    calls = _counting(monkeypatch)
    consecutive = [list(range(5, 13)), []]  # 16 tokens: blocks 5-8, consecutive
    (lean, layers), (lean_logits, layers_logits) = _decode_both(path, consecutive)
    assert calls == {"run": len(DECODE), "taken": len(DECODE)}  # prefill: not asked
    assert torch.equal(lean_logits, layers_logits)
    assert lean_logits.isfinite().all() and lean_logits.std() > 0
    for mine, theirs in zip(lean.kv_caches, layers.kv_caches, strict=True):
        assert torch.equal(mine, theirs)


def test_scattered_blocks_are_gathered_and_other_models_run_the_layers(tmp_path, monkeypatch):
    path = tmp_path / "tiny.gguf"
    write_gguf(make_hf_model("llama-tied"), path, "llama", qtypes={"": Q.Q4_1})
    calls = _counting(monkeypatch)
    (lean, layers), (lean_logits, layers_logits) = _decode_both(path, None)  # reversed blocks
    assert calls == {"run": len(DECODE), "taken": len(DECODE)}
    assert torch.equal(lean_logits, layers_logits)
    for mine, theirs in zip(lean.kv_caches, layers.kv_caches, strict=True):
        assert torch.equal(mine, theirs)
    dense, _ = _load(path, quantization="none")  # the exact float32 path: no int4 layers
    assert LeanDecode.build(dense.model) is None
    assert LeanDecode.build(_load(path)[0].model) is not None
    qk_path = tmp_path / "qwen3.gguf"
    write_gguf(make_hf_model("qwen3-qknorm"), qk_path, "qwen3", qtypes={"": Q.Q4_1})
    assert LeanDecode.build(_load(qk_path)[0].model) is None  # q/k norm: not this path
