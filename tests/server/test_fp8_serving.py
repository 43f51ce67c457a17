"""An FP8 checkpoint behind the real server: a compressed-tensors checkpoint (written by the
library at test time) answers the official openai client with the text of the dequantized
model's greedy tokens, streamed or not."""
from __future__ import annotations

import pytest
import torch
import transformers

from models.fp8_checkpoints import write_compressed_tensors
from server_helpers import running_engine, running_server
from tiny import save_model

pytest.importorskip("compressed_tensors", reason="pip install compressed-tensors (test extra)")


@torch.no_grad()
def _greedy(reference, prompt: list[int], n: int) -> list[int]:
    seq = list(prompt)
    for _ in range(n):
        seq.append(int(reference(torch.tensor([seq])).logits[0, -1].argmax()))
    return seq[len(prompt):]


def test_fp8_checkpoint_served_greedy_matches_the_dequantized_model(tmp_path):
    base = save_model(tmp_path / "base", "qwen3", seed=4)
    path = tmp_path / "fp8"
    reference = write_compressed_tensors(base, path, "channel")
    prompt = [5, 17, 99, 3, 42, 8]
    expected = transformers.AutoTokenizer.from_pretrained(str(path)).decode(
        _greedy(reference, prompt, 24))
    with running_engine(str(path)) as llm, running_server(llm) as server:
        client = server.client()
        kwargs = dict(model=server.model, prompt=prompt, max_tokens=24, temperature=0,
                      extra_body={"ignore_eos": True})
        out = client.completions.create(**kwargs)
        streamed = "".join(c.choices[0].text for c in
                           client.completions.create(stream=True, **kwargs))
    assert out.usage.completion_tokens == 24
    assert out.choices[0].text == streamed == expected
