"""A choice's text as OpenAI's message and stream deltas (server.chat_output), on controlled
outputs: the streamed deltas, reassembled by the official SDK's own stream accumulator, give
the non-streamed message (content, tool_calls, reasoning_content)."""
from __future__ import annotations

import json

import pytest
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletionChunk

from cormorant.server.chat_output import ChoiceDeltas, final_message, tool_finish_reason
from cormorant.server.chat_tools import chat_plan
from cormorant.server.tool_protocol import NamedToolChoice, Tool

TOOLS = [Tool.model_validate({"type": "function", "function": {
    "name": n, "parameters": {"type": "object"}}}) for n in ("get_weather", "get_time")]
QWEN3_LIKE = "{{ tools }} <think> </think>"  # a template that knows tools and think tags
MISTRAL_LIKE = "{{ tools }} [TOOL_CALLS]"
OUTPUTS = [
    (QWEN3_LIKE, '<think>\nNeed the weather.\n</think>\n\n<tool_call>\n{"name": "get_weather",'
     ' "arguments": {"city": "Paris"}}\n</tool_call>\n<tool_call>\n{"name": "get_time", '
     '"arguments": {}}\n</tool_call>'),
    (QWEN3_LIKE, "<think>\nNo tool needed.\n</think>\n\nIt is 4."),
    (QWEN3_LIKE, 'Let me look.<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}'
     '</tool_call>'),
    (MISTRAL_LIKE, ' [{"name": "get_time", "arguments": {"tz": "UTC"}}]'),
    # Arguments with escaped quotes, braces and tags inside strings, compact JSON,
    # nested objects, and the arguments before the name; SmolLM2's list form.
    (QWEN3_LIKE, 'Sure.<tool_call>{"name": "get_weather", "arguments": {"q":"say \\"}\\" '
     '{not} <b> [x]","n":{"a":[1,{"b":"\\\\"}]},"ok":true}}</tool_call>'
     '<tool_call>{"arguments": {"tz": "}"}, "name": "get_time"}</tool_call>'),
    (QWEN3_LIKE, '<tool_call>[{"name": "get_time", "arguments": {"tz": "UTC"}}, '
     '{"name": "get_weather", "arguments": {"city": "Rome"}}]</tool_call>'),
]


def _chunk(delta: dict, finish: str | None = None) -> ChatCompletionChunk:
    return ChatCompletionChunk.model_validate({
        "id": "x", "object": "chat.completion.chunk", "created": 0, "model": "m",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})


@pytest.mark.parametrize("template,text", OUTPUTS)
def test_stream_reassembles_to_message(template, text):
    plan = chat_plan(TOOLS, "auto", None, None, template, "auto")
    message = final_message(plan, text, opened=False)
    for step in (1, 4, len(text)):
        state = ChatCompletionStreamState(input_tools=[t.model_dump() for t in TOOLS])
        deltas = ChoiceDeltas(plan, opened=False)
        state.handle_chunk(_chunk({"role": "assistant", "content": ""}))
        for i in range(0, len(text), step):
            for delta in deltas.feed(text[i:i + step]):
                state.handle_chunk(_chunk(delta))
        for delta in deltas.finish():
            state.handle_chunk(_chunk(delta))
        state.handle_chunk(_chunk({}, tool_finish_reason("stop", deltas.num_calls)))
        got = state.get_final_completion().choices[0]
        calls = [(c.function.name, c.function.arguments) for c in got.message.tool_calls or []]
        assert calls == [(c["function"]["name"], c["function"]["arguments"])
                         for c in message.get("tool_calls", [])]  # exactly, text for text
        assert all(json.loads(args) is not None for _, args in calls)
        assert (got.message.content or "").strip() == (message["content"] or "")
        assert (getattr(got.message, "reasoning_content", None) or "").strip() == \
            (message.get("reasoning_content") or "")
        assert got.finish_reason == ("tool_calls" if calls else "stop")


def test_arguments_stream_in_pieces_as_generated():
    """Hermes: the name goes out as soon as it is complete, then the arguments' text in the
    pieces it is generated in (never the outer `}` or the closing tag), joined exactly."""
    plan = chat_plan(TOOLS, "auto", None, None, QWEN3_LIKE, "none")
    text = OUTPUTS[4][1]
    deltas, sent = ChoiceDeltas(plan, opened=False), []
    for i in range(0, len(text), 3):
        sent.append(deltas.feed(text[i:i + 3]))
    sent.append(deltas.finish())
    flat = [d["tool_calls"][0] for step in sent for d in step if "tool_calls" in d]
    first = [c["function"] for c in flat if c["index"] == 0]
    assert first[0] == {"name": "get_weather", "arguments": ""}
    args = [f["arguments"] for f in first[1:]]
    assert len(args) > 20 and "".join(args) == final_message(plan, text, False)[
        "tool_calls"][0]["function"]["arguments"]
    name_step = next(i for i, step in enumerate(sent) if any(
        "tool_calls" in d and "id" in d["tool_calls"][0] for d in step))
    assert name_step * 3 < text.index('"arguments"') + 20  # not held to the block's end
    assert "".join(f["arguments"] for f in (c["function"] for c in flat if c["index"] == 1)
                   ) == '{"tz": "}"}'


def test_parallel_tool_calls_false_keeps_the_first_call():
    for template, text in (OUTPUTS[0], OUTPUTS[4], OUTPUTS[5]):
        plan = chat_plan(TOOLS, "auto", False, None, template, "auto")
        message = final_message(plan, text, opened=False)
        everything = final_message(chat_plan(TOOLS, "auto", None, None, template, "auto"),
                                   text, opened=False)
        assert len(everything["tool_calls"]) == 2
        assert [c["function"] for c in message["tool_calls"]] == \
            [everything["tool_calls"][0]["function"]]
        for step in (1, 7):
            deltas = ChoiceDeltas(plan, opened=False)
            sent = [d for i in range(0, len(text), step) for d in deltas.feed(text[i:i + step])]
            sent += deltas.finish()
            indexes = {d["tool_calls"][0]["index"] for d in sent if "tool_calls" in d}
            assert indexes == {0} and deltas.num_calls == 1


def test_message_fields():
    plan = chat_plan(TOOLS, "auto", None, None, QWEN3_LIKE, "auto")
    message = final_message(plan, OUTPUTS[0][1], opened=False)
    assert message["content"] is None and message["reasoning_content"] == "Need the weather."
    assert [c["function"]["name"] for c in message["tool_calls"]] == ["get_weather", "get_time"]
    assert all(c["id"].startswith("call_") and c["type"] == "function"
               for c in message["tool_calls"])
    mistral = final_message(chat_plan(TOOLS, "auto", None, None, MISTRAL_LIKE, "auto"),
                            OUTPUTS[3][1], opened=False)
    assert len(mistral["tool_calls"][0]["id"]) == 9 and mistral["tool_calls"][0]["id"].isalnum()


def test_no_tools_no_reasoning_is_plain_text():
    plan = chat_plan(None, None, None, None, "{{ messages }}", "auto")
    text = '<think>x</think><tool_call>{"name": "f", "arguments": {}}</tool_call>'
    assert final_message(plan, text, opened=False) == {"role": "assistant", "content": text,
                                                       "refusal": None}
    deltas = ChoiceDeltas(plan, opened=False)
    assert deltas.feed(text) == [{"content": text}] and deltas.finish() == []


def test_forced_choices_build_schemas():
    required = chat_plan(TOOLS, "required", False, None, QWEN3_LIKE, "none")
    schema = json.loads(required.structured.json)
    assert schema["type"] == "array" and schema["minItems"] == 1 and schema["maxItems"] == 1
    assert [c["properties"]["name"]["const"] for c in schema["items"]["anyOf"]] == \
        ["get_weather", "get_time"]
    choice = NamedToolChoice.model_validate({"type": "function",
                                             "function": {"name": "get_time"}})
    named = chat_plan(TOOLS, choice, None, None, QWEN3_LIKE, "none")
    assert json.loads(named.structured.json) == {"type": "object"}  # no properties: left open
    assert final_message(named, '{"tz": "UTC"}', False)["tool_calls"][0]["function"] == \
        {"name": "get_time", "arguments": '{"tz": "UTC"}'}


def test_cached_replay_streams_tool_calls():
    """A cached response with calls and reasoning, replayed as a stream (server.cached_responses)
    reassembles to the same message in the SDK."""
    from cormorant.server.cached_responses import replay_chat_chunks

    plan = chat_plan(TOOLS, "auto", None, None, QWEN3_LIKE, "auto")
    message = final_message(plan, OUTPUTS[0][1], opened=False)
    entry = {"object": "chat.completion", "model": "m", "system_fingerprint": "fp",
             "choices": [{"index": 0, "message": message, "logprobs": None,
                          "finish_reason": "tool_calls"}], "usage": None}
    state = ChatCompletionStreamState(input_tools=[t.model_dump() for t in TOOLS])
    for chunk in replay_chat_chunks(entry, include_usage=False):
        state.handle_chunk(ChatCompletionChunk.model_validate(chunk))
    got = state.get_final_completion().choices[0]
    assert [(c.id, c.function.name, c.function.arguments) for c in got.message.tool_calls] == \
        [(c["id"], c["function"]["name"], c["function"]["arguments"])
         for c in message["tool_calls"]]
    assert got.message.reasoning_content == message["reasoning_content"]
    assert got.finish_reason == "tool_calls"
