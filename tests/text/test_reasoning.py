"""Reasoning output: `<think>` blocks split from the answer, whole and streamed."""
from __future__ import annotations

import pytest

from cormorant.text.reasoning import (StreamingReasoningParser, reasoning_parser_for_template,
                                      split_reasoning)

CASES = [  # (text, prompt opened the block, reasoning, content)
    ("<think>\nThe user greets.\n</think>\n\nHello!", False, "The user greets.", "Hello!"),
    ("<think>\n\n</think>\n\nHi", False, "", "Hi"),
    ("Plain answer, no thinking.", False, None, "Plain answer, no thinking."),
    ("Say <think> twice</think>", False, None, "Say <think> twice</think>"),
    ("<think>cut off by max_tokens", False, "cut off by max_tokens", ""),
    ("opened in the prompt\n</think>\n\nAnswer", True, "opened in the prompt", "Answer"),
]


@pytest.mark.parametrize("text,opened,reasoning,content", CASES)
def test_split(text, opened, reasoning, content):
    assert split_reasoning(text, opened) == (reasoning, content)


@pytest.mark.parametrize("text,opened,reasoning,content", CASES)
def test_streaming_matches_split(text, opened, reasoning, content):
    for step in (1, 2, 3, 7, len(text)):
        parser = StreamingReasoningParser(opened)
        got_reasoning = got_content = ""
        for i in range(0, len(text), step):
            r, c = parser.feed(text[i:i + step])
            got_reasoning, got_content = got_reasoning + r, got_content + c
        r, c = parser.finish()
        assert (got_reasoning + r).rstrip("\n") == (reasoning or ""), step
        assert got_content + c == content, step


def test_detection_from_template():
    assert reasoning_parser_for_template("...{{ '<think>\\n\\n</think>\\n\\n' }}...") == "qwen3"
    assert reasoning_parser_for_template("{{ messages }}") is None
    assert reasoning_parser_for_template(None) is None
