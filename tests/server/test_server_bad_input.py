"""Every bad request: an OpenAI-shaped error with the right status, then the server still
serves (each case is followed by a successful generation)."""
from __future__ import annotations

import json
import socket

import httpx
import openai
import pytest

from server_helpers import TINY_MAX_MODEL_LEN, assert_openai_error

M = "<model>"  # replaced by the served model name
CHAT = "/v1/chat/completions"
COMP = "/v1/completions"
USER = [{"role": "user", "content": "Hi"}]


def comp(**fields) -> dict:
    return {"model": M, "prompt": "Hello", "max_tokens": 2, **fields}


def chat(**fields) -> dict:
    return {"model": M, "messages": USER, "max_tokens": 2, **fields}


# (id, path, JSON body, status, param)
JSON_CASES = [
    ("missing-model", COMP, {"prompt": "x"}, 400, "model"),
    ("unknown-model", COMP, comp(model="gpt-17"), 404, "model"),
    ("model-not-string", COMP, comp(model=5), 400, "model"),
    ("missing-prompt", COMP, {"model": M}, 400, "prompt"),
    ("empty-prompt", COMP, comp(prompt=""), 400, "prompt"),
    ("empty-prompt-list", COMP, comp(prompt=[]), 400, "prompt"),
    ("empty-string-in-list", COMP, comp(prompt=["a", ""]), 400, "prompt"),
    ("empty-ids-in-list", COMP, comp(prompt=[[1], []]), 400, "prompt"),
    ("mixed-prompt-list", COMP, comp(prompt=["a", [1]]), 400, "prompt"),
    ("too-many-prompts", COMP, comp(prompt=["a"] * 65), 400, "prompt"),
    ("prompt-wrong-type", COMP, comp(prompt={"a": 1}), 400, "prompt"),
    ("token-id-outside-vocab", COMP, comp(prompt=[1, 10**9]), 400, "prompt"),
    ("negative-token-id", COMP, comp(prompt=[1, -1]), 400, "prompt"),
    ("n-zero", COMP, comp(n=0), 400, "n"),
    ("n-too-large", COMP, comp(n=17), 400, "n"),
    ("n-float", COMP, comp(n=2.0), 400, "n"),
    ("choices-too-many", COMP, comp(prompt=["a"] * 20, n=16), 400, "n"),
    ("temperature-negative", COMP, comp(temperature=-0.5), 400, "temperature"),
    ("temperature-too-high", COMP, comp(temperature=2.5), 400, "temperature"),
    ("temperature-string", COMP, comp(temperature="0.5"), 400, "temperature"),
    ("temperature-bool", COMP, comp(temperature=True), 400, "temperature"),
    ("top-p-zero", COMP, comp(top_p=0), 400, "top_p"),
    ("top-p-above-one", COMP, comp(top_p=1.5), 400, "top_p"),
    ("top-k-below-minus-one", COMP, comp(top_k=-2), 400, "top_k"),
    ("min-p-above-one", COMP, comp(min_p=2), 400, "min_p"),
    ("presence-penalty", COMP, comp(presence_penalty=3), 400, "presence_penalty"),
    ("frequency-penalty", COMP, comp(frequency_penalty=-2.5), 400, "frequency_penalty"),
    ("repetition-penalty-zero", COMP, comp(repetition_penalty=0), 400, "repetition_penalty"),
    ("stop-too-many", COMP, comp(stop=["x"] * 17), 400, "stop"),
    ("stop-too-long", COMP, comp(stop=["x" * 257]), 400, "stop"),
    ("stop-empty", COMP, comp(stop=""), 400, "stop"),
    ("stop-wrong-type", COMP, comp(stop=5), 400, "stop"),
    ("stop-token-outside-vocab", COMP, comp(stop_token_ids=[10**6]), 400, "stop_token_ids"),
    ("logprobs-above-20", COMP, comp(logprobs=21), 400, "logprobs"),
    ("logit-bias-outside-vocab", COMP, comp(logit_bias={"999999": 1}), 400, "logit_bias"),
    ("logit-bias-bad-key", COMP, comp(logit_bias={"hello": 1}), 400, "logit_bias"),
    ("logit-bias-bad-value", COMP, comp(logit_bias={"1": 200}), 400, "logit_bias"),
    ("min-tokens-above-max", COMP, comp(min_tokens=5, max_tokens=2), 400, "min_tokens"),
    ("max-tokens-zero", COMP, comp(max_tokens=0), 400, "max_tokens"),
    ("max-tokens-past-context", COMP, comp(max_tokens=TINY_MAX_MODEL_LEN), 400, "max_tokens"),
    ("prompt-past-context", COMP, comp(prompt=[1] * TINY_MAX_MODEL_LEN, max_tokens=None), 400,
     "prompt"),
    # Long enough to be tokenized off the event loop, on the tokenizer pool.
    ("text-prompt-past-context", COMP, comp(prompt="hello there " * 20_000), 400, "prompt"),
    ("chat-past-context", CHAT, chat(messages=[{"role": "user", "content": "hi " * 20_000}]),
     400, "messages"),
    ("seed-too-large", COMP, comp(seed=2**64), 400, "seed"),
    ("stream-options-without-stream", COMP, comp(stream_options={"include_usage": True}), 400,
     "stream_options"),
    ("stream-options-unknown-key", COMP, comp(stream=True, stream_options={"x": 1}), 400,
     "stream_options.x"),
    ("unknown-parameter", COMP, comp(frobnicate=1), 400, "frobnicate"),
    ("suffix-unsupported", COMP, comp(suffix="!"), 400, "suffix"),
    ("best-of-unsupported", COMP, comp(best_of=3), 400, "best_of"),
    ("user-too-long", COMP, comp(user="u" * 300), 400, "user"),
    ("chat-missing-messages", CHAT, {"model": M}, 400, "messages"),
    ("chat-empty-messages", CHAT, chat(messages=[]), 400, "messages"),
    ("chat-messages-not-list", CHAT, chat(messages="hi"), 400, "messages"),
    ("chat-too-many-messages", CHAT, chat(messages=USER * 1025), 400, "messages"),
    ("chat-tool-no-call-id", CHAT, chat(messages=[{"role": "tool", "content": "x"}]), 400,
     "messages[0]"),
    ("chat-bad-role", CHAT, chat(messages=[{"role": "robot", "content": "x"}]), 400,
     "messages[0].role"),
    ("chat-missing-role", CHAT, chat(messages=[{"content": "x"}]), 400, "messages[0].role"),
    ("chat-content-int", CHAT, chat(messages=[{"role": "user", "content": 5}]), 400,
     "messages[0].content"),
    ("chat-image-part", CHAT, chat(messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}]), 400,
     "messages[0].content"),
    ("chat-tool-calls", CHAT, chat(messages=[{"role": "assistant", "content": "x",
                                              "tool_calls": [{"id": "1"}]}]), 400,
     "messages[0].tool_calls[0].function"),
    ("chat-tool-name", CHAT, chat(tools=[{"type": "function", "function": {"name": "a b"}}]),
     400, "tools[0].function.name"),
    ("chat-tool-choice", CHAT, chat(tool_choice="required"), 400, "tool_choice"),
    ("chat-template-kwargs", CHAT, chat(chat_template_kwargs={"add_generation_prompt": False}),
     400, "chat_template_kwargs"),
    ("chat-functions", CHAT, chat(functions=[{"name": "f"}]), 400, "functions"),
    ("chat-json-schema-without-schema", CHAT, chat(response_format={"type": "json_schema"}),
     400, "response_format"),
    ("chat-json-schema-unimplemented-key", CHAT, chat(response_format={
        "type": "json_schema", "json_schema": {"name": "x", "schema": {
            "type": "array", "uniqueItems": True}}}), 400, "response_format"),
    ("chat-format-and-structured-outputs", CHAT, chat(response_format={"type": "json_object"},
                                                      structured_outputs={"regex": "a+"}), 400,
     "structured_outputs"),
    ("completions-two-constraints", COMP, comp(structured_outputs={
        "regex": "a+", "choice": ["a"]}), 400, "structured_outputs"),
    ("chat-top-logprobs-above-20", CHAT, chat(logprobs=True, top_logprobs=21), 400,
     "top_logprobs"),
    ("chat-top-logprobs-without-logprobs", CHAT, chat(top_logprobs=2), 400, "top_logprobs"),
    ("chat-max-completion-tokens-past-context", CHAT,
     chat(max_tokens=None, max_completion_tokens=10**6), 400, "max_completion_tokens"),
    ("chat-echo-unknown", CHAT, chat(echo=True), 400, "echo"),
    ("tokenize-both", "/tokenize", {"prompt": "a", "messages": USER}, 400, "prompt"),
    ("tokenize-neither", "/tokenize", {}, 400, "prompt"),
    ("detokenize-outside-vocab", "/detokenize", {"tokens": [1, 10**7]}, 400, "tokens"),
    ("detokenize-not-ints", "/detokenize", {"tokens": ["a"]}, 400, "tokens[0]"),
]


def _fill(value, model: str):
    if value == M:
        return model
    if isinstance(value, dict):
        return {k: _fill(v, model) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_fill(v, model) for v in value]
    return value


def assert_alive(server) -> None:
    out = server.client().chat.completions.create(model=server.model, messages=USER,
                                                  max_tokens=2)
    assert out.choices[0].finish_reason in ("stop", "length")


@pytest.mark.parametrize("path,body,status,param", [c[1:] for c in JSON_CASES],
                         ids=[c[0] for c in JSON_CASES])
def test_bad_json_request(tiny_server, path, body, status, param):
    response = httpx.post(tiny_server.url + path, json=_fill(body, tiny_server.model))
    assert_openai_error(response, status, param)
    assert_alive(tiny_server)


def _post_raw(server, content: bytes, content_type: str | None = "application/json",
              **headers) -> httpx.Response:
    if content_type is not None:
        headers["content-type"] = content_type
    return httpx.post(server.url + COMP, content=content, headers=headers)


RAW_CASES = [
    ("invalid-json", b'{"model": ', "application/json", 400),
    ("json-array", b"[1, 2]", "application/json", 400),
    ("json-string", b'"hello"', "application/json", 400),
    ("json-null", b"null", "application/json", 400),
    ("empty-body", b"", "application/json", 400),
    ("invalid-utf8", b'{"model": "\xff\xfe", "prompt": "x"}', "application/json", 400),
    ("nan", b'{"model": "m", "prompt": "x", "temperature": NaN}', "application/json", 400),
    ("infinity", b'{"model": "m", "prompt": "x", "temperature": 1e999}', "application/json", 400),
    ("thousands-of-digits", b'{"model": "m", "prompt": "x", "max_tokens": ' + b"9" * 5000 + b"}",
     "application/json", 400),
    ("deep-nesting", b'{"model": "m", "prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
     "application/json", 400),
    ("wrong-content-type", b'{"model": "m", "prompt": "x"}', "text/plain", 415),
    ("form-content-type", b"model=m&prompt=x", "application/x-www-form-urlencoded", 415),
    ("no-content-type", b'{"model": "m", "prompt": "x"}', None, 415),
    ("non-utf8-charset", b'{"model": "m", "prompt": "x"}', "application/json; charset=latin-1",
     415),
]


@pytest.mark.parametrize("content,content_type,status", [c[1:] for c in RAW_CASES],
                         ids=[c[0] for c in RAW_CASES])
def test_bad_raw_body(tiny_server, content, content_type, status):
    assert_openai_error(_post_raw(tiny_server, content, content_type), status)
    assert_alive(tiny_server)


def test_error_message_is_bounded(tiny_server):
    huge = "z" * 1_000_000
    for body in (comp(model=huge), comp(logit_bias={huge: 1}), comp(frobnicate=1, **{huge: 1})):
        response = httpx.post(tiny_server.url + COMP, json=_fill(body, tiny_server.model))
        assert len(response.content) < 2048
        assert_openai_error(response, 400)
    assert_alive(tiny_server)


def test_body_too_large_by_content_length(tiny_server):
    body = json.dumps(comp(prompt="x" * (5 << 20))).encode()
    assert_openai_error(_post_raw(tiny_server, body), 413)
    assert_alive(tiny_server)


def test_body_too_large_chunked(tiny_server):
    def chunks():  # no Content-Length: the limit must hold while the body streams in
        yield b'{"model": "m", "prompt": "'
        for _ in range(80):
            yield b"x" * 65536
        yield b'"}'

    response = httpx.post(tiny_server.url + COMP, content=chunks(),
                          headers={"content-type": "application/json"})
    assert_openai_error(response, 413)
    assert_alive(tiny_server)


def test_invalid_content_length(tiny_server):
    data = _raw_exchange(tiny_server, b"POST /v1/completions HTTP/1.1\r\nhost: x\r\n"
                         b"content-type: application/json\r\ncontent-length: -5\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 400"), data[:200]
    assert b'"error"' in data
    assert_alive(tiny_server)


def test_too_many_headers(tiny_server):
    response = httpx.get(tiny_server.url + "/v1/models",
                         headers={f"x-h{i}": "v" for i in range(150)})
    assert_openai_error(response, 431)
    assert_alive(tiny_server)


def _raw_exchange(server, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(request)
        data = b""
        while True:
            more = sock.recv(65536)
            if not more:
                return data
            data += more
            if data.endswith(b"}}"):
                return data


@pytest.mark.parametrize("request_bytes", [
    # Over the app's header budget: answered by the limits middleware.
    b"GET /v1/models HTTP/1.1\r\nhost: x\r\nx-big: " + b"v" * 20_000 + b"\r\n\r\n",
    # Still incomplete past the parser's buffer: answered by the HTTP protocol itself.
    b"GET /v1/models HTTP/1.1\r\nhost: x\r\nx-big: " + b"v" * 30_000,
], ids=["app-limit", "parser-limit"])
def test_headers_too_large(tiny_server, request_bytes):
    data = _raw_exchange(tiny_server, request_bytes)
    assert data.startswith(b"HTTP/1.1 431"), data[:200]
    _, _, body = data.partition(b"\r\n\r\n")
    assert set(json.loads(body)["error"]) == {"message", "type", "param", "code"}
    assert_alive(tiny_server)


def test_malformed_http(tiny_server):
    data = _raw_exchange(tiny_server, b"THIS IS NOT HTTP\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 400") and b'"error"' in data
    assert_alive(tiny_server)


def test_unknown_route_and_method(tiny_server):
    assert_openai_error(httpx.get(tiny_server.url + "/v1/nothing"), 404)
    assert_openai_error(httpx.get(tiny_server.url + COMP), 405)
    assert_openai_error(httpx.get(tiny_server.url + "/v1/models/not-a-model"), 404, "model")
    assert_alive(tiny_server)


def test_sdk_raises_typed_errors(client, tiny_server):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=tiny_server.model, messages=USER,
                                       tools=[{"type": "function",
                                               "function": {"name": "f", "parameters": {}}}],
                                       tool_choice={"type": "function",
                                                    "function": {"name": "g"}})
    assert info.value.body["param"] == "tool_choice"
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="nope", prompt="x")
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=tiny_server.model, prompt="x", max_tokens=10**6)
    assert str(TINY_MAX_MODEL_LEN) in info.value.message
    assert info.value.code == "context_length_exceeded"
    assert_alive(tiny_server)
