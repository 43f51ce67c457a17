"""/v1/embeddings and /v1/classify over real HTTP: a chat model (tiny Llama) and two encoders
(the real all-MiniLM-L6-v2 and a tiny random BERT classifier) served by one app, driven by
the official openai client and httpx."""
from __future__ import annotations

import asyncio
import base64

import httpx
import numpy as np
import openai
import pytest

from cormorant.frontend.embedder import Embedder
from models.test_bert import (LABELS, TEXTS, cosine_distance, minilm_dir,
                              save_tiny_bert_classifier, sentence_transformers_reference,
                              transformers_probs)
from server_helpers import ServerThread, assert_openai_error


@pytest.fixture(scope="module")
def classifier_path(tmp_path_factory) -> str:
    return str(save_tiny_bert_classifier(tmp_path_factory.mktemp("tiny-bert-cls")))


@pytest.fixture(scope="module")
def encoders(classifier_path):
    minilm = Embedder.from_path(minilm_dir(), name="all-MiniLM-L6-v2", device="cpu")
    classifier = Embedder.from_path(classifier_path, name="tiny-sentiment", device="cpu")
    yield minilm, classifier
    minilm.shutdown()
    classifier.shutdown()


@pytest.fixture(scope="module")
def server(tiny_llm, encoders):
    srv = ServerThread(tiny_llm, encoders=encoders).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def reference():
    return sentence_transformers_reference(minilm_dir(), TEXTS)


def _post(server, path: str, body: dict) -> httpx.Response:
    return httpx.post(server.url + path, json=body, timeout=60)


def test_openai_client_embeddings_match_sentence_transformers(server, reference):
    client = server.client()
    # The client asks for base64 by default and decodes it itself.
    result = client.embeddings.create(model="all-MiniLM-L6-v2", input=TEXTS)
    assert [d.index for d in result.data] == list(range(len(TEXTS)))
    assert float(cosine_distance([d.embedding for d in result.data], reference).max()) < 1e-5
    assert result.usage.prompt_tokens == result.usage.total_tokens > len(TEXTS)
    one = client.embeddings.create(model="all-MiniLM-L6-v2", input=TEXTS[0],
                                   encoding_format="float")
    assert float(cosine_distance(one.data[0].embedding, reference[0])) < 1e-5


def test_base64_decodes_to_the_float_response(server):
    body = {"model": "all-MiniLM-L6-v2", "input": TEXTS[:2]}
    floats = _post(server, "/v1/embeddings", body).json()["data"]
    encoded = _post(server, "/v1/embeddings", {**body, "encoding_format": "base64"}).json()
    for f, b in zip(floats, encoded["data"], strict=True):
        decoded = np.frombuffer(base64.b64decode(b["embedding"]), dtype="<f4")
        assert decoded.tolist() == np.asarray(f["embedding"], dtype="<f4").tolist()


def test_token_id_inputs(server, encoders):
    ids = encoders[0].tokenize(TEXTS[1])
    by_text = _post(server, "/v1/embeddings", {"model": "all-MiniLM-L6-v2",
                                               "input": TEXTS[1]}).json()["data"][0]
    for value in (ids, [ids, ids]):
        data = _post(server, "/v1/embeddings", {"model": "all-MiniLM-L6-v2",
                                                "input": value}).json()["data"]
        assert float(cosine_distance(data[-1]["embedding"], by_text["embedding"])) < 1e-6


def test_concurrent_requests_are_batched(server, encoders):
    minilm = encoders[0]
    num_requests = 8

    async def many():
        async with server.async_client() as client:
            return await asyncio.gather(*(
                client.embeddings.create(model="all-MiniLM-L6-v2", input=TEXTS)
                for _ in range(num_requests)))

    before = minilm.num_forward_passes
    results = asyncio.run(many())
    assert len(results) == num_requests
    assert minilm.num_forward_passes - before < num_requests


def test_models_lists_every_served_model(server):
    ids = [m.id for m in server.client().models.list().data]
    assert ids == [server.model, "all-MiniLM-L6-v2", "tiny-sentiment"]
    card = server.client().models.retrieve("tiny-sentiment")
    assert card.id == "tiny-sentiment"


def test_classify_matches_transformers_softmax(server, encoders, classifier_path):
    texts = ["the movie was great", "terrible service, never again", "it was fine"]
    response = _post(server, "/v1/classify", {"model": "tiny-sentiment", "input": texts})
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    ref = transformers_probs(classifier_path, [encoders[1].tokenize(t) for t in texts])
    for item, probs in zip(data, ref, strict=True):
        assert item["num_classes"] == len(LABELS)
        assert np.allclose(item["probs"], probs, atol=1e-5)
        assert item["label"] == LABELS[int(np.argmax(probs))]


@pytest.mark.parametrize("path, body, status, param", [
    ("/v1/embeddings", {"model": "nope", "input": "x"}, 404, "model"),
    ("/v1/classify", {"model": "nope", "input": "x"}, 404, "model"),
    ("/v1/embeddings", {"model": "all-MiniLM-L6-v2", "input": "x", "dimensions": 8}, 400,
     "dimensions"),
    ("/v1/embeddings", {"model": "all-MiniLM-L6-v2", "input": "x",
                        "encoding_format": "int8"}, 400, "encoding_format"),
    ("/v1/embeddings", {"model": "all-MiniLM-L6-v2", "input": []}, 400, "input"),
    ("/v1/embeddings", {"model": "all-MiniLM-L6-v2", "input": ["x"] * 65}, 400, "input"),
    ("/v1/embeddings", {"model": "all-MiniLM-L6-v2", "input": [[1, 2], [10**6]]}, 400,
     "input[1]"),
    ("/v1/classify", {"model": "all-MiniLM-L6-v2", "input": "x"}, 400, "model"),
])
def test_bad_requests(server, path, body, status, param):
    assert_openai_error(_post(server, path, body), status, param)


def test_too_long_input_names_the_numbers(server):
    error = assert_openai_error(_post(server, "/v1/classify", {
        "model": "tiny-sentiment", "input": [[5, 6], [5] * 65]}), 400, "input[1]")
    assert "65" in error["message"] and "64" in error["message"]
    error = assert_openai_error(_post(server, "/v1/embeddings", {
        "model": "all-MiniLM-L6-v2", "input": "word " * 600}), 400, "input")
    assert "602" in error["message"] and "512" in error["message"]


def test_openai_client_unknown_model_is_not_found(server):
    with pytest.raises(openai.NotFoundError):
        server.client().embeddings.create(model="text-embedding-3-small", input="hi")


def test_serve_flag_loads_named_encoders(classifier_path):
    import argparse

    from cormorant.server.launch import add_serve_args, load_encoders

    parser = argparse.ArgumentParser()
    add_serve_args(parser)
    args = parser.parse_args(["--embedding-model", f"{classifier_path}=sentiment",
                              "--embedding-model", classifier_path])
    encoders = load_encoders(args.embedding_model, "auto", "cpu")
    try:
        assert [e.model_name for e in encoders] == ["sentiment", encoders[1].model_name]
        assert encoders[1].model_name.startswith("tiny-bert-cls")
    finally:
        for encoder in encoders:
            encoder.shutdown()
    with pytest.raises(ValueError, match="config.json"):
        load_encoders(["/nonexistent/dir"], "auto", "cpu")


def test_embeddings_and_classify_count_against_the_quotas(tiny_llm, encoders):
    """Encoder requests are metered like generations: over rpm -> 429 with Retry-After and
    the rate-limit headers, and the server stays up."""
    limited = ServerThread(tiny_llm, encoders=encoders, default_rpm=2).start()
    try:
        body = {"model": "all-MiniLM-L6-v2", "input": "quota"}
        first = _post(limited, "/v1/embeddings", body)
        assert first.status_code == 200 and first.headers["x-ratelimit-limit-requests"] == "2"
        assert _post(limited, "/v1/classify", {"model": "tiny-sentiment", "input": "x"}) \
            .status_code == 200
        refused = _post(limited, "/v1/embeddings", body)
        assert_openai_error(refused, 429)
        assert int(refused.headers["retry-after"]) >= 1
        assert httpx.get(limited.url + "/health").status_code == 200
    finally:
        limited.stop()
