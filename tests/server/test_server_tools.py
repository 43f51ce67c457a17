"""Tool calling over HTTP on the tiny model with the official client: a full round trip of
messages is accepted, streaming agrees with the plain response, and abusive tool lists are a
fast 400 that names the limit while the server stays up."""
from __future__ import annotations

import time

import httpx
import pytest

from server_helpers import assert_openai_error, running_engine, running_server
from cormorant.server.tool_protocol import MAX_SCHEMA_DEPTH, MAX_TOOLS


@pytest.fixture(scope="module")
def tools_server(tiny_llama):
    """The tiny model with room for a tools prompt (its toy tokenizer spends many tokens)."""
    with running_engine(tiny_llama, max_model_len=2048) as llm, running_server(llm) as server:
        yield server

TOOLS = [{"type": "function", "function": {  # short: the tiny model's context is 512
    "name": "get_weather", "parameters": {"type": "object",
                                          "properties": {"city": {"type": "string"}}}}}]
ROUND_TRIP = [
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "18C and sunny"},
]


def test_round_trip_messages(tools_server):
    client = tools_server.client()
    out = client.chat.completions.create(model=tools_server.model, messages=ROUND_TRIP,
                                         tools=TOOLS, max_tokens=8, temperature=0)
    assert out.choices[0].finish_reason in ("stop", "length", "tool_calls")
    assert out.usage.prompt_tokens > 0


def test_stream_equals_plain(tools_server):
    client = tools_server.client()
    kwargs = dict(model=tools_server.model, messages=ROUND_TRIP[:1], tools=TOOLS,
                  tool_choice="auto", parallel_tool_calls=True, max_tokens=12, temperature=0)
    plain = client.chat.completions.create(**kwargs).choices[0]
    content, reason = "", None
    for chunk in client.chat.completions.create(stream=True, **kwargs):
        for choice in chunk.choices:
            content += choice.delta.content or ""
            reason = choice.finish_reason or reason
    assert content.strip() == (plain.message.content or "").strip()
    assert reason == plain.finish_reason


def test_tool_choice_none_and_template_kwargs(tools_server):
    client = tools_server.client()
    out = client.chat.completions.create(
        model=tools_server.model, messages=ROUND_TRIP[:1], tools=TOOLS, tool_choice="none",
        max_tokens=4, extra_body={"chat_template_kwargs": {"enable_thinking": False}})
    assert out.choices[0].message.tool_calls is None


def _post(server, body: dict) -> httpx.Response:
    return httpx.post(server.url + "/v1/chat/completions", json=body, timeout=30)


@pytest.mark.parametrize("tools,limit", [
    ([TOOLS[0]] * 10_000, f"at most {MAX_TOOLS}"),
    ([{"type": "function", "function": {"name": "f", "description": "d" * 300_000}}],
     "characters of JSON"),
])
def test_tool_bounds(tools_server, tools, limit):
    start = time.perf_counter()
    response = _post(tools_server, {"model": tools_server.model, "messages": ROUND_TRIP[:1],
                                   "tools": tools})
    assert time.perf_counter() - start < 2.0
    error = assert_openai_error(response, 400, "tools")
    assert limit in error["message"]
    assert httpx.get(tools_server.url + "/health").status_code == 200


def test_schema_depth_bound(tools_server):
    schema: dict = {"type": "object"}
    for _ in range(MAX_SCHEMA_DEPTH + 5):
        schema = {"type": "object", "properties": {"x": schema}}
    response = _post(tools_server, {"model": tools_server.model, "messages": ROUND_TRIP[:1],
                                   "tools": [{"type": "function", "function": {
                                       "name": "f", "parameters": schema}}]})
    error = assert_openai_error(response, 400, "tools[0]")
    assert f"at most {MAX_SCHEMA_DEPTH}" in error["message"]
    assert httpx.get(tools_server.url + "/health").status_code == 200


def test_unenforceable_schema_is_400(tools_server):
    """A forced choice whose parameters schema the grammar engine rejects: a 400 before the
    engine sees it, the server unharmed."""
    bad = [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"x": {"$ref": "#/nowhere"}}}}}]
    response = _post(tools_server, {"model": tools_server.model, "messages": ROUND_TRIP[:1],
                                     "tools": bad, "tool_choice": "required"})
    error = assert_openai_error(response, 400, "tool_choice")
    assert "cannot be enforced" in error["message"]
    # tool_choice "auto" constrains nothing: the same tools are served.
    ok = _post(tools_server, {"model": tools_server.model, "messages": ROUND_TRIP[:1],
                              "tools": bad, "max_tokens": 2})
    assert ok.status_code == 200


# Two Hermes calls the tiny random model is made to write (a regex constraint stands in for a
# tuned model's habit); under tool_choice "auto" the server parses them as it would any output.
TWO_CALLS = {"regex": r'<tool_call>\{"name": "get_weather", "arguments": \{"city": '
             r'"[a-z]{3,6}"\}\}</tool_call>\n<tool_call>\{"name": "get_weather", '
             r'"arguments": \{"city": "[a-z]{3,6}"\}\}</tool_call>'}


def _streamed_calls(client, **kwargs) -> tuple[dict[int, list[str]], str | None]:
    """Per call index, its argument pieces as they arrived (the name delta first)."""
    calls: dict[int, list[str]] = {}
    reason = None
    for chunk in client.chat.completions.create(stream=True, **kwargs):
        for choice in chunk.choices:
            reason = choice.finish_reason or reason
            for call in choice.delta.tool_calls or []:
                pieces = calls.setdefault(call.index, [])
                if call.function.name:
                    pieces.append(f"name={call.function.name}")
                if call.function.arguments:
                    pieces.append(call.function.arguments)
    return calls, reason


@pytest.mark.parametrize("parallel", [None, False])
def test_parallel_tool_calls_over_http(tools_server, parallel):
    """Hermes arguments stream in pieces that join to the plain response's arguments;
    parallel_tool_calls false keeps the first call only, plain and streamed."""
    client = tools_server.client()
    kwargs = dict(model=tools_server.model, messages=ROUND_TRIP[:1], tools=TOOLS,
                  tool_choice="auto", max_tokens=400, temperature=0,
                  extra_body={"structured_outputs": TWO_CALLS})
    if parallel is not None:
        kwargs["parallel_tool_calls"] = parallel
    plain = client.chat.completions.create(**kwargs).choices[0]
    want = 1 if parallel is False else 2
    assert plain.finish_reason == "tool_calls" and len(plain.message.tool_calls) == want
    streamed, reason = _streamed_calls(client, **kwargs)
    assert reason == "tool_calls" and sorted(streamed) == list(range(want))
    for index, call in enumerate(plain.message.tool_calls):
        pieces = streamed[index]
        assert pieces[0] == "name=get_weather" and len(pieces) > 2  # arguments in pieces
        assert "".join(pieces[1:]) == call.function.arguments
