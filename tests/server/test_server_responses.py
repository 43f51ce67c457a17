"""POST /v1/responses with the official client on the tiny model: a response, its stream of
events (agreeing with the plain response), conversations kept per API key through
previous_response_id (another key gets 404), text.format's JSON constraint (the same output
as chat's response_format), and bad input as 400s."""
from __future__ import annotations

import json

import httpx
import jsonschema
import openai
import pytest

from multi_model import Keys
from server_helpers import assert_openai_error, running_engine, running_server

ARGS = dict(input="Hello there", instructions="Be brief.", max_output_tokens=8, temperature=0)


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    return Keys(tmp_path_factory.mktemp("responses-keys") / "keys.json")


@pytest.fixture(scope="module")
def server(tiny_llama, keys):
    with running_engine(tiny_llama, max_model_len=2048) as llm, \
            running_server(llm, keys_file=keys.path) as server:
        yield server


def test_create_and_stream(server, keys):
    client = server.client(api_key=keys.alice)
    plain = client.responses.create(model=server.model, **ARGS)
    assert plain.id.startswith("resp_") and plain.object == "response"
    assert plain.status == "incomplete" and plain.incomplete_details.reason == \
        "max_output_tokens"
    assert plain.output[0].type == "message" and plain.output[0].role == "assistant"
    assert plain.output_text and plain.usage.output_tokens == 8
    assert plain.usage.total_tokens == plain.usage.input_tokens + 8

    events = list(client.responses.create(model=server.model, stream=True, **ARGS))
    types = [e.type for e in events]
    assert types[:4] == ["response.created", "response.in_progress",
                         "response.output_item.added", "response.content_part.added"]
    assert types[-4:] == ["response.output_text.done", "response.content_part.done",
                          "response.output_item.done", "response.incomplete"]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == plain.output_text == events[-1].response.output_text


def test_previous_response_id_per_key(server, keys):
    alice = server.client(api_key=keys.alice)
    first = alice.responses.create(model=server.model, **ARGS)
    second = alice.responses.create(model=server.model, input="And then?",
                                    previous_response_id=first.id, max_output_tokens=4,
                                    temperature=0)
    # The second prompt holds the first turn (its input and output) and the new input,
    # without the first turn's instructions (they do not carry over).
    alone = alice.responses.create(model=server.model, input="And then?",
                                   max_output_tokens=4, temperature=0)
    assert second.usage.input_tokens > alone.usage.input_tokens + first.usage.output_tokens
    assert second.previous_response_id == first.id
    with pytest.raises(openai.NotFoundError) as info:
        server.client(api_key=keys.bob).responses.create(
            model=server.model, input="x", previous_response_id=first.id)
    assert info.value.body["param"] == "previous_response_id"
    unstored = alice.responses.create(model=server.model, input="x", store=False,
                                      max_output_tokens=2)
    with pytest.raises(openai.NotFoundError):
        alice.responses.create(model=server.model, input="x", previous_response_id=unstored.id)


SCHEMA = {"type": "object", "properties": {
    "city": {"type": "string", "enum": ["Paris", "Oslo", "Lima"]},
    "population": {"type": "integer", "minimum": 0, "maximum": 99999},
    "capital": {"type": "boolean"}},
    "required": ["city", "population", "capital"], "additionalProperties": False}


def test_text_format_json_schema(server, keys):
    """The tiny random model writes schema-valid JSON under text.format, streamed alike, and
    exactly what chat's response_format gives for the same prompt (one constraint seam)."""
    client = server.client(api_key=keys.alice)
    fmt = {"type": "json_schema", "name": "city", "schema": SCHEMA, "strict": True}
    args = dict(model=server.model, input="Describe a city.", max_output_tokens=120,
                temperature=0, text={"format": fmt})
    plain = client.responses.create(**args)
    assert plain.status == "completed", plain.output_text
    jsonschema.validate(json.loads(plain.output_text), SCHEMA)
    assert plain.text.format.type == "json_schema" and plain.text.format.name == "city"
    events = list(client.responses.create(stream=True, **args))
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == \
        plain.output_text
    chat = client.chat.completions.create(
        model=server.model, messages=[{"role": "user", "content": "Describe a city."}],
        max_tokens=120, temperature=0, response_format={"type": "json_schema", "json_schema": {
            "name": "city", "schema": SCHEMA, "strict": True}})
    assert chat.choices[0].message.content == plain.output_text
    free = client.responses.create(model=server.model, input="Describe a city.",
                                   max_output_tokens=120, temperature=0)
    assert free.output_text != plain.output_text  # the constraint changed the output
    obj = client.responses.create(model=server.model, input="x", max_output_tokens=30,
                                  temperature=0, text={"format": {"type": "json_object"}})
    chat_obj = client.chat.completions.create(
        model=server.model, messages=[{"role": "user", "content": "x"}], max_tokens=30,
        temperature=0, response_format={"type": "json_object"})
    assert obj.output_text.lstrip().startswith("{")
    assert obj.output_text == chat_obj.choices[0].message.content


@pytest.mark.parametrize("body,param", [
    ({"input": "x", "text": {"format": {"type": "json_schema", "name": "c"}}},
     "text.format"),
    ({"input": "x", "text": {"format": {"type": "json_schema", "name": "c", "schema": {
        "type": "array", "items": {"type": "string", "pattern": "(a+)+$" * 2000}}}}},
     "text.format"),
    ({"input": ""}, "input"),
    ({"input": [{"role": "robot", "content": "x"}]}, "input"),
    ({"input": "x", "reasoning": {"effort": "high"}}, "reasoning"),
    ({"input": "x", "tools": [{"type": "function", "name": "f"}] * 10_000}, "tools"),
    ({"input": "x", "max_output_tokens": 0}, "max_output_tokens"),
])
def test_bad_input(server, keys, body, param):
    response = httpx.post(server.url + "/v1/responses", json={"model": server.model, **body},
                          headers={"authorization": f"Bearer {keys.alice}"}, timeout=30)
    error = assert_openai_error(response, 400)
    assert error["param"].startswith(param), error
    assert httpx.get(server.url + "/health").status_code == 200


def test_needs_a_key(server):
    response = httpx.post(server.url + "/v1/responses", json={"model": server.model,
                                                              "input": "x"})
    assert response.status_code == 401
