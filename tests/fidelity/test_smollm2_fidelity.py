"""bf16 fidelity on a real checkpoint: SmolLM2-135M-Instruct from its Q4_1 GGUF, on the CPU.

cormorant and transformers (which loads the same GGUF, dequantized) each run bf16 against
transformers' fp32 over fixed English texts under teacher forcing; cormorant's bf16 must be as
close to fp32 as transformers' bf16 (cormorant.bench.fidelity.judge). Slow: transformers takes
~15 s to load the GGUF.
"""
from __future__ import annotations

import os

import pytest
import torch

from cormorant.bench import fidelity
from cormorant.layers.attention import TorchAttention
from cormorant.models.loader import load_model
from cormorant.text.tokenizer import load_tokenizer

pytestmark = pytest.mark.slow
TEXTS = [
    "<|im_start|>user\nWhat is the capital of France, and why is it famous?<|im_end|>\n"
    "<|im_start|>assistant\nThe capital of France is Paris. It is famous for the Eiffel",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci("
    "n - 2)\n\nprint([fibonacci(i) for i in range(10)])",
    "The quick brown fox jumps over the lazy dog. Meanwhile, in a small village by the sea, "
    "an old fisherman mended his nets and told the children about the storm of his youth.",
]
LENGTH = 32  # tokens scored per text: 16 prefilled, 16 decoded one at a time


@pytest.fixture(scope="module")
def sequences(smollm2_path):
    tokenizer = load_tokenizer(smollm2_path)
    seqs = [tokenizer.encode(text)[:LENGTH] for text in TEXTS]
    assert all(len(s) == LENGTH for s in seqs)
    return seqs


@pytest.fixture(scope="module")
def transformers_runs(smollm2_path, sequences):
    from transformers import AutoModelForCausalLM
    directory, name = os.path.split(smollm2_path)
    hf = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32,
                                              attn_implementation="eager").eval()
    ref = fidelity.hf_logits(hf, sequences)
    return ref, fidelity.compare(fidelity.hf_logits(hf.to(torch.bfloat16), sequences), ref)


def test_smollm2_bf16_as_close_to_fp32_as_transformers(smollm2_path, sequences,
                                                       transformers_runs):
    ref, hf_bf16 = transformers_runs
    model, config = load_model(smollm2_path, torch.bfloat16, "cpu", TorchAttention())
    ours = fidelity.compare(fidelity.paged_logits(model, config, sequences, LENGTH // 2), ref)
    assert hf_bf16.kl_mean > 1e-5, "bf16 must differ from fp32, or the check measures nothing"
    problems = fidelity.judge(ours, hf_bf16)
    assert not problems, f"ours {ours}; transformers bf16 {hf_bf16}: {problems}"
    print(f"\nSmolLM2 bf16: cormorant {ours}; transformers {hf_bf16}")
