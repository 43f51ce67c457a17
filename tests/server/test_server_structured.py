"""Constrained decoding over HTTP with the official openai client: response_format
json_object / json_schema, the structured_outputs extra, streaming, n > 1, seeds, logprobs
of the masked distribution, and the bounds (each breach a 400 naming the limit, fast)."""
from __future__ import annotations

import json
import re
import time

import httpx
import jsonschema
import pytest

from server_helpers import assert_openai_error

SCHEMA = {"type": "object", "properties": {
    "city": {"type": "string", "enum": ["Paris", "Oslo", "Lima"]},
    "population": {"type": "integer", "minimum": 0, "maximum": 99999},
    "tags": {"type": "array", "items": {"type": "string", "pattern": "^[a-z]{1,6}$"},
             "minItems": 1, "maxItems": 3},
    "capital": {"type": "boolean"}},
    "required": ["city", "population", "tags", "capital"], "additionalProperties": False}
FORMAT = {"type": "json_schema", "json_schema": {"name": "city", "schema": SCHEMA,
                                                 "strict": True}}
MESSAGES = [{"role": "user", "content": "Describe a city as JSON."}]


def _chat(client, model, **kwargs):
    kwargs.setdefault("max_tokens", 120)
    return client.chat.completions.create(model=model, messages=MESSAGES, **kwargs)


def _streamed(client, model, **kwargs) -> dict[int, str]:
    texts: dict[int, str] = {}
    for chunk in _chat(client, model, stream=True, **kwargs):
        for choice in chunk.choices:
            texts[choice.index] = texts.get(choice.index, "") + (choice.delta.content or "")
    return texts


def test_json_schema_greedy_and_streamed(client, tiny_server):
    out = _chat(client, tiny_server.model, temperature=0, response_format=FORMAT)
    text = out.choices[0].message.content
    jsonschema.validate(json.loads(text), SCHEMA)
    assert out.choices[0].finish_reason == "stop"
    assert _streamed(client, tiny_server.model, temperature=0, response_format=FORMAT) == {
        0: text}


def test_json_schema_sampled_n2_seeded(client, tiny_server):
    kwargs = dict(temperature=1.0, seed=7, n=2, response_format=FORMAT)
    out = _chat(client, tiny_server.model, **kwargs)
    texts = [c.message.content for c in out.choices]
    for text in texts:
        jsonschema.validate(json.loads(text), SCHEMA)
    assert _streamed(client, tiny_server.model, **kwargs) == dict(enumerate(texts))


def test_json_object(client, tiny_server):
    out = _chat(client, tiny_server.model, temperature=0.7, seed=1, max_tokens=200,
                response_format={"type": "json_object"})
    if out.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(out.choices[0].message.content), dict)
    else:  # a random model may write a long object: what it wrote is a valid prefix
        assert out.choices[0].message.content.startswith("{")


def test_completions_regex_choice_grammar(client, tiny_server):
    def complete(so, **kw):
        return client.completions.create(model=tiny_server.model, prompt="Answer:",
                                         max_tokens=40, temperature=0.9, seed=3,
                                         extra_body={"structured_outputs": so}, **kw)
    out = complete({"regex": "[a-c]{2,4}-[0-9]{3}"})
    assert re.fullmatch("[a-c]{2,4}-[0-9]{3}", out.choices[0].text), out.choices[0].text
    out = complete({"choice": ["Paris", "Oslo", "Lima"]}, n=3)
    assert {c.text for c in out.choices} <= {"Paris", "Oslo", "Lima"}
    out = complete({"grammar": 'root ::= "yes" | "no" | "maybe " [0-9]'})
    assert re.fullmatch("yes|no|maybe [0-9]", out.choices[0].text), out.choices[0].text
    out = complete({"json": json.dumps({"type": "array", "items": {"type": "boolean"},
                                        "minItems": 2, "maxItems": 2}),
                    "disable_any_whitespace": True})
    assert re.fullmatch(r"\[(true|false),(true|false)\]", out.choices[0].text)


def test_logprobs_are_of_the_masked_distribution(client, tiny_server):
    out = client.chat.completions.create(
        model=tiny_server.model, messages=MESSAGES, max_tokens=4, temperature=0,
        logprobs=True, top_logprobs=5, extra_body={"structured_outputs": {
            "choice": ["yes", "no"]}})
    assert out.choices[0].message.content in ("yes", "no")
    first = out.choices[0].logprobs.content[0]
    # Masked tokens have -inf (sent as -9999.0, OpenAI's floor); the rest start "yes" or "no"
    # and hold all of the probability.
    allowed = [t for t in first.top_logprobs if t.logprob > -9999.0]
    assert len(allowed) == 2 and len(first.top_logprobs) == 5
    assert all("yes".startswith(t.token) or "no".startswith(t.token) for t in allowed)
    assert sum(2.718281828 ** t.logprob for t in allowed) == pytest.approx(1.0, abs=1e-3)


ABUSE = [
    ("depth-10000-schema-text", {"structured_outputs": {"json": "[" * 10_000 + "]" * 10_000}},
     "max_schema_depth"),
    ("depth-200-schema-object", {"response_format": {"type": "json_schema", "json_schema": {
        "name": "deep", "schema": json.loads('{"items": ' * 200 + "{}" + "}" * 200)}}},
     "max_schema_depth"),
    ("1mb-grammar", {"structured_outputs": {"grammar": "root ::= " + '"a" | ' * 150_000
                                            + '"b"'}}, "max_grammar_bytes"),
    ("huge-regex", {"structured_outputs": {"regex": "a" * 20_000}}, "max_regex_bytes"),
    ("too-many-choices", {"structured_outputs": {"choice": ["x"] * 1001}}, "max_choices"),
    ("broken-regex", {"structured_outputs": {"regex": "(" * 50}}, "invalid_value"),
]


@pytest.mark.parametrize("body,code", [a[1:] for a in ABUSE], ids=[a[0] for a in ABUSE])
def test_bounds_are_400s_naming_the_limit(tiny_server, body, code):
    start = time.monotonic()
    response = httpx.post(tiny_server.url + "/v1/chat/completions", timeout=30, json={
        "model": tiny_server.model, "messages": MESSAGES, "max_tokens": 4, **body})
    assert time.monotonic() - start < 2.0
    error = assert_openai_error(response, 400)
    assert error["code"] == code, error
    if code != "invalid_value":
        assert code in error["message"]


def test_deep_body_is_a_400_and_backtracking_regexes_are_fast(client, tiny_server):
    start = time.monotonic()
    deep = '{"items": ' * 10_000 + "{}" + "}" * 10_000
    body = ('{"model": "%s", "messages": [{"role": "user", "content": "x"}], '
            '"response_format": {"type": "json_schema", "json_schema": {"name": "d", '
            '"schema": %s}}}' % (tiny_server.model, deep))
    response = httpx.post(tiny_server.url + "/v1/chat/completions", content=body,
                          headers={"content-type": "application/json"}, timeout=30)
    assert_openai_error(response, 400)
    assert "nested too deeply" in response.json()["error"]["message"]
    # Catastrophic for a backtracking engine; llguidance's lexer is a lazy DFA.
    for pattern in ("(a+)+$", "(a|aa)+b", "(a|b)*a(a|b){12}"):
        out = client.completions.create(model=tiny_server.model, prompt="x", max_tokens=8,
                                        temperature=0, extra_body={
                                            "structured_outputs": {"regex": pattern}})
        assert out.choices[0].text is not None
    assert time.monotonic() - start < 6.0
    out = _chat(client, tiny_server.model, temperature=0, response_format=FORMAT)
    jsonschema.validate(json.loads(out.choices[0].message.content), SCHEMA)
