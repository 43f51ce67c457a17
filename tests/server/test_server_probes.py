"""Probes, models, tokenize/detokenize, the OpenAPI document, API keys, bind safety, and what
the server does when the engine loop dies."""
from __future__ import annotations

import httpx
import openai
import pytest

from cormorant.server.launch import main as launch_main
from server_helpers import ServerThread, assert_openai_error, start_engine, tiny_engine_config


def test_health_and_ready(tiny_server):
    health = httpx.get(tiny_server.url + "/health")
    assert health.status_code == 200
    engine = health.json()["engine"]
    assert engine["is_loop_alive"] is True
    assert engine["num_total_blocks"] >= engine["num_free_blocks"] > 0
    assert httpx.get(tiny_server.url + "/ready").json() == {"status": "ready"}


def test_models(client, tiny_server):
    models = client.models.list()
    assert [m.id for m in models.data] == [tiny_server.model]
    assert client.models.retrieve(tiny_server.model).id == tiny_server.model
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("someone/else")


def test_tokenize_detokenize_round_trip(tiny_server):
    text = "Café: déjà vu 🦜"
    tokens = httpx.post(tiny_server.url + "/tokenize",
                        json={"model": tiny_server.model, "prompt": text,
                              "add_special_tokens": False}).json()
    assert tokens["count"] == len(tokens["tokens"]) > 0
    assert tokens["max_model_len"] == tiny_server.engine.max_model_len
    back = httpx.post(tiny_server.url + "/detokenize", json={"tokens": tokens["tokens"]}).json()
    assert back == {"prompt": text}
    chat = httpx.post(tiny_server.url + "/tokenize",
                      json={"messages": [{"role": "user", "content": "Hi"}]}).json()
    assert chat["tokens"] == tiny_server.engine.tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}])


def test_openapi_document(tiny_server):
    doc = httpx.get(tiny_server.url + "/openapi.json").json()
    for path in ("/v1/completions", "/v1/chat/completions", "/v1/models", "/v1/models/{model_id}",
                 "/tokenize", "/detokenize", "/health", "/ready"):
        assert path in doc["paths"], path
    body = doc["paths"]["/v1/chat/completions"]["post"]["requestBody"]
    ref = body["content"]["application/json"]["schema"]["$ref"].split("/")[-1]
    assert "messages" in doc["components"]["schemas"][ref]["properties"]
    assert "ErrorResponse" in doc["components"]["schemas"]
    # What the server really answers: auth, limits, quotas, overload; SSE when streaming.
    for path in ("/v1/completions", "/v1/chat/completions", "/tokenize", "/v1/models"):
        operation = next(iter(doc["paths"][path].values()))
        assert {"400", "401", "403", "413", "415", "429", "503"} <= set(operation["responses"])
        assert "422" not in operation["responses"]
    for path in ("/v1/completions", "/v1/chat/completions"):
        ok = doc["paths"][path]["post"]["responses"]["200"]["content"]
        assert {"application/json", "text/event-stream"} <= set(ok)
    assert "Retry-After" in doc["paths"]["/v1/completions"]["post"]["responses"]["503"]["headers"]


@pytest.fixture(scope="module")
def keyed_server(tiny_llm):
    server = ServerThread(tiny_llm, api_key="sk-test-123", served_model_name="keyed").start()
    yield server
    server.stop()


def test_api_key(keyed_server):
    assert keyed_server.model == "keyed"
    with pytest.raises(openai.AuthenticationError):
        keyed_server.client(api_key="wrong").models.list()
    assert_openai_error(httpx.get(keyed_server.url + "/v1/models"), 401)
    assert_openai_error(httpx.post(keyed_server.url + "/v1/completions",
                                   json={"model": "keyed", "prompt": "x"}), 401)
    # The probes stay open to orchestrators that hold no key.
    assert httpx.get(keyed_server.url + "/health").status_code == 200
    assert httpx.get(keyed_server.url + "/ready").status_code == 200
    out = keyed_server.client(api_key="sk-test-123").completions.create(
        model="keyed", prompt="Hello", max_tokens=2)
    assert out.choices[0].text is not None


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.10", "example.com"])
def test_refuses_public_bind_without_key(host, capsys):
    # Refused before any model is loaded (the path does not exist).
    assert launch_main(["--host", host, "--model", "/nonexistent"]) == 2
    assert "refusing to bind" in capsys.readouterr().err


@pytest.mark.parametrize("key", ["   ", "x", "short-key-123", "aaaaaaaaaaaaaaaaaaaaaaaa",
                                 " padded-but-long-enough-key-1234 "])
def test_refuses_public_bind_with_weak_key(key, capsys):
    assert launch_main(["--host", "0.0.0.0", "--api-key", key, "--model", "/nonexistent"]) == 2
    err = capsys.readouterr().err
    assert "weak --api-key" in err or "--api-key is empty or whitespace" in err
    assert key.strip() not in err or len(key.strip()) <= 1  # the key itself is never echoed


def test_whitespace_key_is_refused_even_on_loopback(capsys):
    assert launch_main(["--api-key", "  ", "--model", "/nonexistent"]) == 2
    assert "--api-key is empty or whitespace" in capsys.readouterr().err


def test_strong_key_passes_the_bind_check(capsys):
    # Past the bind check, the missing model is what fails.
    with pytest.raises(Exception, match="neither a model directory nor a GGUF file"):
        launch_main(["--host", "0.0.0.0", "--api-key", "Zq8-vT3kP0wLm2Xr9sYb", "--model",
                     "/nonexistent"])
    assert "refusing to bind" not in capsys.readouterr().err


def test_dead_engine_is_reported_and_fails_requests(tiny_llama):
    llm = start_engine(tiny_engine_config(tiny_llama))
    server = ServerThread(llm).start()
    try:
        client = server.client()
        stream = client.completions.create(model=server.model, prompt="Hello", max_tokens=400,
                                           stream=True, extra_body={"ignore_eos": True})
        next(iter(stream))
        llm.shutdown()  # the engine loop stops; the open stream must not hang
        with pytest.raises(openai.APIError):
            for _ in stream:
                pass
        health = httpx.get(server.url + "/health")
        assert health.status_code == 503
        assert health.json()["engine"]["is_loop_alive"] is False
        response = httpx.post(server.url + "/v1/completions",
                              json={"model": server.model, "prompt": "x", "max_tokens": 2})
        assert_openai_error(response, 503)
        assert int(response.headers["retry-after"]) >= 1  # a client knows when to come back
    finally:
        server.stop()
        llm.shutdown()
