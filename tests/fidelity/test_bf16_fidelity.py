"""bf16 fidelity on the CPU (torch attention backend): cormorant's bf16 logits must be as close
to the fp32 reference as transformers' own bf16 run, for every family and the GGUF path.

Tiny random models (cormorant.bench.fidelity.FAMILIES: the GPU check's shapes), 4 fixed
sequences of 48 tokens scored under teacher forcing: 24 prefilled, 24 decoded one at a time.
A deliberate regression (rotary angles computed in bf16) must fail the same check; the runner
path (input packing, padded decode-graph buffers) is checked for Qwen2. The real SmolLM2 GGUF
is in test_smollm2_fidelity.py (slow).
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from cormorant.bench import fidelity
from cormorant.layers.attention import TorchAttention
from cormorant.models.loader import load_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "models"))
from gguf_test_utils import write_gguf  # noqa: E402

PREFILL = 24
CASES = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "llama-gguf": "llama"}


@pytest.fixture(scope="module", params=list(CASES))
def case(request, tmp_path_factory):
    """(name, checkpoint path, fixed sequences, fp32 reference logits, transformers' bf16
    stats against it)."""
    name = request.param
    hf = fidelity.make_hf_model(CASES[name], seed=0)
    directory = tmp_path_factory.mktemp(name)
    if name.endswith("-gguf"):
        path = str(directory / "tiny.gguf")
        write_gguf(hf, path, "llama")
    else:
        path = fidelity.save_checkpoint(hf, directory)
    seqs = fidelity.fixed_sequences(hf.config.vocab_size)
    ref = fidelity.hf_logits(hf, seqs)
    hf_bf16 = fidelity.compare(fidelity.hf_logits(hf.to(torch.bfloat16), seqs), ref)
    return name, path, seqs, ref, hf_bf16


def cormorant_stats(case, dtype: torch.dtype) -> fidelity.Stats:
    _, path, seqs, ref, _ = case
    model, config = load_model(path, dtype, "cpu", TorchAttention())
    return fidelity.compare(fidelity.paged_logits(model, config, seqs, PREFILL), ref)


def test_fp32_matches_the_reference(case):
    stats = cormorant_stats(case, torch.float32)
    assert stats.positions == 4 * 48
    assert stats.top1 == 1.0 and stats.kl_max < 1e-5, stats


def test_bf16_as_close_to_fp32_as_transformers_bf16(case):
    name, *_, hf_bf16 = case
    ours = cormorant_stats(case, torch.bfloat16)
    assert hf_bf16.kl_mean > 1e-5, "bf16 must differ from fp32, or the check measures nothing"
    problems = fidelity.judge(ours, hf_bf16)
    assert not problems, f"{name}: ours {ours}; transformers bf16 {hf_bf16}: {problems}"


def _rotary_angles_in_bf16(model) -> None:
    """A regression: rotary angles from bf16 inverse frequencies and positions (a classic
    bug: the rotation drifts with the position), written into the model's cos/sin cache."""
    rotary = model.model.rotary_emb
    exponents = torch.arange(0, rotary.head_dim, 2).float() / rotary.head_dim
    inv_freq = (1.0 / rotary.base ** exponents).bfloat16()
    positions = torch.arange(rotary.max_position, dtype=torch.bfloat16)
    angles = (positions[:, None] * inv_freq[None, :]).float()
    rotary.cos_sin_cache.copy_(torch.cat((angles.cos(), angles.sin()), dim=-1))


def test_a_regression_fails_the_check(case):
    name, path, seqs, ref, hf_bf16 = case
    model, config = load_model(path, torch.bfloat16, "cpu", TorchAttention())
    _rotary_angles_in_bf16(model)
    ours = fidelity.compare(fidelity.paged_logits(model, config, seqs, PREFILL), ref)
    assert fidelity.judge(ours, hf_bf16), f"{name}: regression not caught: {ours}"


@pytest.mark.parametrize("case", ["qwen2"], indirect=True)  # one family is enough on the CPU
def test_runner_path_with_padded_decode_graph_buffers(case):
    """The same check through a ModelRunner (its input packing, and its decode graphs'
    padded buffers run eagerly, as the GPU check's "torch padded" variant does)."""
    name, path, seqs, ref, hf_bf16 = case
    ours = fidelity.compare(fidelity.variant_logits(path, "torch padded", seqs, PREFILL, "cpu"),
                            ref)
    assert not fidelity.judge(ours, hf_bf16), f"{name}: ours {ours}; transformers {hf_bf16}"
