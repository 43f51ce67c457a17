"""Tiny random Hugging Face checkpoints (Llama, Mistral, Qwen2, Qwen3) loaded by cormorant and
run through paged prefill + decode must reproduce transformers' eager logits."""
from __future__ import annotations

import pytest
import torch

from cormorant.layers.attention import TorchAttention
from cormorant.models.loader import load_model
from model_test_utils import CASES, PagedRunner, make_checkpoint, reference_logits

ATOL = 1e-4
PROMPTS = [[5, 17, 99, 3, 42], [7, 1, 2, 3, 4, 5, 6, 8, 9, 10, 11], [120, 64, 33, 2, 90, 91, 15]]
DECODE = [[11, 12], [13, 14], [127, 0]]  # fed token by token after the prompts


def check_prefill_and_decode(hf_model, model, config) -> None:
    runner = PagedRunner(model, config, num_seqs=len(PROMPTS), max_len=16)
    prefill = runner.step(dict(enumerate(PROMPTS)))
    decodes = [runner.step({i: [d[step]] for i, d in enumerate(DECODE)}) for step in range(2)]
    for i, prompt in enumerate(PROMPTS):
        ref = reference_logits(hf_model, prompt + DECODE[i])
        ours = torch.cat([prefill[i]] + [d[i] for d in decodes])
        assert ours.dtype == torch.float32
        torch.testing.assert_close(ours, ref, atol=ATOL, rtol=0)


@pytest.mark.parametrize("case", list(CASES))
def test_logits_match_transformers(tmp_path, case):
    hf_model = make_checkpoint(tmp_path, case)
    model, config = load_model(str(tmp_path), torch.float32, "cpu", TorchAttention())
    assert config.architecture == type(hf_model).__name__
    check_prefill_and_decode(hf_model, model, config)


def test_sharded_checkpoint(tmp_path):
    hf_model = make_checkpoint(tmp_path, "llama3-rope-untied", max_shard_size="40KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    assert len(list(tmp_path.glob("*.safetensors"))) > 2
    model, config = load_model(str(tmp_path), torch.float32, "cpu", TorchAttention())
    check_prefill_and_decode(hf_model, model, config)


def test_chunked_prefill_mixed_with_decode(tmp_path):
    """A prompt computed in two chunks while another sequence decodes in the same batch."""
    hf_model = make_checkpoint(tmp_path, "qwen2-bias")
    model, config = load_model(str(tmp_path), torch.float32, "cpu", TorchAttention())
    runner = PagedRunner(model, config, num_seqs=2, max_len=16)
    long, short = PROMPTS[1], PROMPTS[0]
    first = runner.step({0: long[:6], 1: short})
    second = runner.step({0: long[6:], 1: [DECODE[0][0]]})
    torch.testing.assert_close(torch.cat([first[0], second[0]]),
                               reference_logits(hf_model, long), atol=ATOL, rtol=0)
    torch.testing.assert_close(torch.cat([first[1], second[1]]),
                               reference_logits(hf_model, short + [DECODE[0][0]]),
                               atol=ATOL, rtol=0)


def test_bfloat16_load_tracks_float32(tmp_path):
    hf_model = make_checkpoint(tmp_path, "llama-tied")
    model, config = load_model(str(tmp_path), "bfloat16", "cpu", TorchAttention())
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    runner = PagedRunner(model, config, num_seqs=1, max_len=16, dtype=torch.bfloat16)
    ours = runner.step({0: PROMPTS[1]})[0]
    ref = reference_logits(hf_model, PROMPTS[1])
    assert (ours - ref).abs().max() < 0.1 * ref.abs().max()
