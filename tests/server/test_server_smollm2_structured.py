"""The real SmolLM2 under a json_schema response_format, through the official openai client:
valid JSON that matches the schema, streamed and not (the same text, greedy)."""
from __future__ import annotations

import json

import jsonschema

SCHEMA = {"type": "object", "properties": {
    "country": {"type": "string", "maxLength": 40},
    "capital": {"type": "string", "maxLength": 40},
    "population_millions": {"type": "integer", "minimum": 0, "maximum": 2000}},
    "required": ["country", "capital", "population_millions"], "additionalProperties": False}
MESSAGES = [{"role": "user", "content": "Give the capital and population of France as JSON."}]
FORMAT = {"type": "json_schema",
          "json_schema": {"name": "country", "schema": SCHEMA, "strict": True}}


def test_json_schema_streamed_and_not(smollm2_server):
    client = smollm2_server.client()
    kwargs = dict(model=smollm2_server.model, messages=MESSAGES, max_tokens=80,
                  temperature=0, response_format=FORMAT)
    out = client.chat.completions.create(**kwargs)
    text = out.choices[0].message.content
    assert out.choices[0].finish_reason == "stop", text
    jsonschema.validate(json.loads(text), SCHEMA)
    streamed = "".join(chunk.choices[0].delta.content or ""
                       for chunk in client.chat.completions.create(stream=True, **kwargs)
                       if chunk.choices)
    assert streamed == text
