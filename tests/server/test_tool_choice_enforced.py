"""The real SmolLM2-135M-Instruct over the official client: forced tool choices come back as
calls that parse and match the function's schema (the engine's JSON-schema constraint),
streamed and not, and a full tool round trip completes. Needs the `structured` branch's
constrained decoding."""
from __future__ import annotations

import json

import jsonschema
import pytest

pytestmark = pytest.mark.slow

WEATHER = {"type": "object", "properties": {"city": {"type": "string"},
                                            "unit": {"enum": ["C", "F"]}},
           "required": ["city", "unit"]}
TOOLS = [{"type": "function", "function": {"name": "get_weather",
                                           "description": "Current weather of a city",
                                           "parameters": WEATHER}},
         {"type": "function", "function": {"name": "get_time",
                                           "description": "Current time in a time zone",
                                           "parameters": {"type": "object", "properties": {
                                               "tz": {"type": "string"}},
                                               "required": ["tz"]}}}]
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


def _calls(message) -> list[tuple[str, dict]]:
    return [(c.function.name, json.loads(c.function.arguments)) for c in message.tool_calls]


@pytest.mark.parametrize("choice", ["required",
                                    {"type": "function", "function": {"name": "get_weather"}}])
def test_forced_choice(smollm2_server, choice):
    client = smollm2_server.client()
    kwargs = dict(model=smollm2_server.model, messages=ASK, tools=TOOLS, tool_choice=choice,
                  parallel_tool_calls=False, max_tokens=64, temperature=0)
    out = client.chat.completions.create(**kwargs).choices[0]
    assert out.finish_reason == "tool_calls" and out.message.content is None
    calls = _calls(out.message)
    assert len(calls) == 1 and out.message.tool_calls[0].id.startswith("call_")
    name, arguments = calls[0]
    schema = next(t["function"]["parameters"] for t in TOOLS if t["function"]["name"] == name)
    jsonschema.validate(arguments, schema)
    if isinstance(choice, dict):
        assert name == "get_weather"
    # Streamed: the same call, as OpenAI's tool_calls deltas.
    names, arguments_text, reason = [], "", None
    for chunk in client.chat.completions.create(stream=True, **kwargs):
        for c in chunk.choices:
            for delta in c.delta.tool_calls or []:
                assert delta.index == 0
                if delta.function.name:
                    names.append(delta.function.name)
                    assert delta.id.startswith("call_")
                arguments_text += delta.function.arguments or ""
            reason = c.finish_reason or reason
    assert names == [name] and json.loads(arguments_text) == arguments
    assert reason == "tool_calls"


def test_round_trip(smollm2_server):
    """Call -> the tool's result -> a final answer in plain text."""
    client = smollm2_server.client()
    first = client.chat.completions.create(model=smollm2_server.model, messages=ASK,
                                           tools=TOOLS[:1], tool_choice="required",
                                           max_tokens=64, temperature=0).choices[0].message
    call = first.tool_calls[0]
    messages = [*ASK, first.model_dump(exclude_none=True),
                {"role": "tool", "tool_call_id": call.id,
                 "content": json.dumps({"temperature": 18, "unit": "C", "sky": "sunny"})}]
    final = client.chat.completions.create(model=smollm2_server.model, messages=messages,
                                           tools=TOOLS[:1], max_tokens=24, temperature=0)
    answer = final.choices[0]
    assert answer.finish_reason in ("stop", "length")
    assert answer.message.tool_calls is None and answer.message.content.strip()


def test_responses_api_function_round_trip(smollm2_server):
    """The Responses API: a forced call as a function_call item (streamed as its events too),
    then its output sent back with previous_response_id gives a message."""
    client = smollm2_server.client()
    tools = [{"type": "function", **{k: v for k, v in TOOLS[0]["function"].items()}}]
    first = client.responses.create(model=smollm2_server.model, input=ASK[0]["content"],
                                    tools=tools, tool_choice="required", temperature=0,
                                    max_output_tokens=64)
    assert first.status == "completed"
    call = next(item for item in first.output if item.type == "function_call")
    assert call.name == "get_weather" and call.call_id.startswith("call_")
    jsonschema.validate(json.loads(call.arguments), WEATHER)
    events = list(client.responses.create(model=smollm2_server.model,
                                          input=ASK[0]["content"], tools=tools,
                                          tool_choice="required", temperature=0,
                                          max_output_tokens=64, stream=True))
    arguments = "".join(e.delta for e in events
                        if e.type == "response.function_call_arguments.delta")
    assert json.loads(arguments) == json.loads(call.arguments)
    assert events[-1].type == "response.completed"
    final = client.responses.create(
        model=smollm2_server.model, previous_response_id=first.id, tools=tools,
        input=[{"type": "function_call_output", "call_id": call.call_id,
                "output": json.dumps({"temperature": 18, "unit": "C"})}],
        temperature=0, max_output_tokens=24)
    assert final.output[0].type == "message" and final.output_text.strip()
