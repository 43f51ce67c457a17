"""The real reference model: SmolLM2-135M-Instruct from its Q4_1 GGUF, against transformers'
own GGUF loading, greedy, on chat prompts."""
from __future__ import annotations

import os

import pytest
import torch

from cormorant import LLM, SamplingParams

pytestmark = pytest.mark.slow

CHATS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "List three primary colors.",
]
NEW_TOKENS = 24


@pytest.fixture(scope="module")
def reference(smollm2_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = os.path.split(smollm2_path)
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    return tok, model.eval()


@pytest.fixture(scope="module")
def llm(smollm2_path):
    return LLM(smollm2_path, max_model_len=2048)


def _reference_ids(tok, model, question):
    ids = tok.apply_chat_template([{"role": "user", "content": question}],
                                  add_generation_prompt=True, return_tensors="pt")
    if not isinstance(ids, torch.Tensor):
        ids = ids["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False)
    return ids[0].tolist(), out[0, ids.shape[1]:].tolist()


def test_paris(llm):
    out = llm.chat([{"role": "user", "content": "What is the capital of France?"}],
                   SamplingParams(temperature=0.0, max_tokens=30))[0].outputs[0]
    assert out.text == "The capital of France is Paris."
    assert out.finish_reason == "stop"


def test_chat_prompts_token_identical_to_transformers(llm, reference):
    tok, model = reference
    conversations = [[{"role": "user", "content": q}] for q in CHATS]
    ours = llm.chat(conversations, SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS))
    for question, out in zip(CHATS, ours):
        prompt_ids, expected = _reference_ids(tok, model, question)
        assert out.prompt_token_ids == prompt_ids
        assert out.outputs[0].token_ids == expected, question
