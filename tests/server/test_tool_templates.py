"""Tools, tool calls and tool results through the real chat templates of each family.

The request side of tool calling, without a model: protocol models -> server.prompts ->
the family's Jinja template (tests/text/chat_templates.py). Each family must see the calls in
the shape its template expects (arguments as an object, Mistral's 9-character ids), and a
call rendered back into the prompt must read as the same call through that family's parser.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "text"))
from chat_templates import LLAMA31, MISTRAL, QWEN3, QWEN25, SMOLLM2  # noqa: E402

from cormorant.server.chat_tools import chat_plan  # noqa: E402
from cormorant.server.prompts import template_entries  # noqa: E402
from cormorant.server.protocol import ChatCompletionRequest  # noqa: E402
from cormorant.text.tokenizer import load_tokenizer  # noqa: E402
from cormorant.text.tool_parsers import parser_for_template  # noqa: E402
from tiny import save_tokenizer  # noqa: E402

TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Current weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}]
CALL_ID = "abcDEF123"  # Mistral's templates want 9 alphanumeric characters
MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": CALL_ID, "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
    {"role": "tool", "tool_call_id": CALL_ID, "content": "18C"},
]


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok")
    save_tokenizer(path)
    return path


def render(tokenizer_dir, template: str, **request) -> str:
    req = ChatCompletionRequest.model_validate(
        {"model": "m", "messages": MESSAGES, "tools": TOOLS, **request})
    tokenizer = load_tokenizer(str(tokenizer_dir), chat_template=template)
    plan = chat_plan(req.tools, req.tool_choice, req.parallel_tool_calls,
                     req.chat_template_kwargs, template, "auto")
    entries, kwargs = template_entries(req.messages, tokenizer, plan.inputs)
    return tokenizer.render_chat(entries, True, **kwargs)


def test_qwen25(tokenizer_dir):
    text = render(tokenizer_dir, QWEN25)
    assert text.startswith("<|im_start|>system\nBe brief.\n\n# Tools\n")
    assert '<tools>\n{"type": "function", "function": {"name": "get_weather"' in text
    assert ('<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": '
            '{"city": "Paris"}}\n</tool_call><|im_end|>') in text
    assert "<|im_start|>user\n<tool_response>\n18C\n</tool_response><|im_end|>" in text
    assert text.endswith("<|im_start|>assistant\n")


def test_qwen3_thinking_switch(tokenizer_dir):
    assert render(tokenizer_dir, QWEN3).endswith("<|im_start|>assistant\n")
    off = render(tokenizer_dir, QWEN3, chat_template_kwargs={"enable_thinking": False})
    assert off.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}' in off


def test_llama31(tokenizer_dir):
    text = render(tokenizer_dir, LLAMA31)
    assert "Environment: ipython\n" in text
    assert '"name": "get_weather"' in text and "Given the following functions" in text
    assert ('<|start_header_id|>assistant<|end_header_id|>\n\n{"name": "get_weather", '
            '"parameters": {"city": "Paris"}}<|eot_id|>') in text
    assert '<|start_header_id|>ipython<|end_header_id|>\n\n"18C"<|eot_id|>' in text


def test_mistral(tokenizer_dir):
    text = render(tokenizer_dir, MISTRAL)
    assert '[AVAILABLE_TOOLS] [{"type": "function", "function": {"name": "get_weather"' in text
    assert ('[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris"}, '
            f'"id": "{CALL_ID}"}}]') in text
    assert f'[TOOL_RESULTS] {{"content": 18C, "call_id": "{CALL_ID}"}}[/TOOL_RESULTS]' in text


def test_smollm2_gets_tools_inline(tokenizer_dir):
    """A template that renders no tools: the server writes them into the conversation."""
    text = render(tokenizer_dir, SMOLLM2)
    assert text.startswith("<|im_start|>system\nBe brief.\n\nYou can call these functions")
    assert json.dumps(TOOLS[0]) in text
    assert ('<|im_start|>assistant\n<tool_call>[{"name": "get_weather", "arguments": '
            '{"city": "Paris"}}]</tool_call><|im_end|>') in text
    assert "<|im_start|>user\n<tool_response>\n18C\n</tool_response><|im_end|>" in text


def test_tool_choice_none_leaves_tools_out(tokenizer_dir):
    assert "<tools>" not in render(tokenizer_dir, QWEN25, tool_choice="none")


@pytest.mark.parametrize("template,family", [(QWEN25, "hermes"), (QWEN3, "hermes"),
                                             (SMOLLM2, "hermes"), (LLAMA31, "llama3_json"),
                                             (MISTRAL, "mistral")])
def test_rendered_call_parses_back(tokenizer_dir, template, family):
    """The assistant turn a template writes for a call is what that family's parser reads as
    the same call: the format we parse is the format the model was shown."""
    parser = parser_for_template(template)
    assert parser.name == family
    turn = _assistant_turn(render(tokenizer_dir, template), family)
    calls = parser.parse(turn).calls
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [("get_weather",
                                                                   {"city": "Paris"})]


def _assistant_turn(text: str, family: str) -> str:
    if family == "mistral":
        return text[text.index("[TOOL_CALLS]"):text.index("[TOOL_RESULTS]")].replace(
            "<|im_end|>", "")
    if family == "llama3_json":
        head = "<|start_header_id|>assistant<|end_header_id|>\n\n"
        start = text.index(head) + len(head)
        return text[start:text.index("<|eot_id|>", start)]
    start = text.index("<|im_start|>assistant\n") + len("<|im_start|>assistant\n")
    return text[start:text.index("<|im_end|>", start)]
