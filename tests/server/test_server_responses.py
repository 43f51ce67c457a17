"""POST /v1/responses with the official client on the tiny model: a response, its stream of
events (agreeing with the plain response), conversations kept per API key through
previous_response_id (another key gets 404), and bad input as 400s."""
from __future__ import annotations

import httpx
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


@pytest.mark.parametrize("body,param", [
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
