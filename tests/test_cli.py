"""`cormorant generate` and `cormorant chat` as a user runs them."""
from __future__ import annotations

import subprocess
import sys

import pytest


def _run(args, stdin=""):
    return subprocess.run([sys.executable, "-m", "cormorant", *args], input=stdin,
                          capture_output=True, text=True, timeout=300)


def test_generate_prints_the_completion(tiny_llama):
    from cormorant import LLM, SamplingParams

    expected = LLM(tiny_llama, num_kv_blocks=32).generate(
        "The quick", SamplingParams(temperature=0.0, max_tokens=5))[0].outputs[0].text
    done = _run(["generate", "--model", tiny_llama, "--max-tokens", "5", "The quick"])
    assert done.returncode == 0, done.stderr
    assert done.stdout == expected + "\n"


def test_chat_streams_replies_until_eof(tiny_llama):
    from cormorant import LLM, SamplingParams

    llm = LLM(tiny_llama, num_kv_blocks=32)
    params = SamplingParams(temperature=0.0, max_tokens=4)
    history, replies = [], []
    for line in ("hello", "again"):  # the conversation the CLI must hold
        history.append({"role": "user", "content": line})
        replies.append(llm.chat(history, params)[0].outputs[0].text)
        history.append({"role": "assistant", "content": replies[-1]})
    done = _run(["chat", "--model", tiny_llama, "--max-tokens", "4"], stdin="hello\nagain\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "> " + replies[0] + "\n> " + replies[1] + "\n> "


@pytest.mark.slow
def test_generate_on_the_embedded_default_model():
    done = _run(["generate", "--chat", "--max-tokens", "30", "What is the capital of France?"])
    assert done.returncode == 0, done.stderr
    assert "Paris" in done.stdout
