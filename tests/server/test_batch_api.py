"""The Files and Batch APIs over real HTTP with the official client, on the tiny random Llama:
results match the same requests sent one by one, upload validation names the bad line,
ownership (another key: 404), cancel, expiry, and encryption at rest."""
from __future__ import annotations

import base64
import json
import os
import time

import httpx
import openai
import pytest

from cormorant.engine.types import is_background
from cormorant.gateway.auth.keys import create_key
from cormorant.gateway.auth.keystore import write_key_file
from server_helpers import assert_openai_error, running_server

DONE = ("completed", "failed", "expired", "cancelled")


def chat_line(i: int, model: str, max_tokens: int = 6) -> dict:
    return {"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": model, "messages": [{"role": "user", "content": f"Say {i}"}],
                     "max_tokens": max_tokens, "temperature": 0}}


def jsonl(lines: list[dict]) -> bytes:
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


def wait_done(client: openai.OpenAI, batch_id: str, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while True:
        batch = client.batches.retrieve(batch_id)
        if batch.status in DONE or time.monotonic() > deadline:
            return batch
        time.sleep(0.05)


def read_lines(client: openai.OpenAI, file_id: str) -> list[dict]:
    return [json.loads(line) for line in client.files.content(file_id).text.splitlines()]


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    path = tmp_path_factory.mktemp("batch-keys") / "keys.json"
    records, tokens = [], {}
    for name in ("alice", "bob"):
        record, tokens[name] = create_key(name, frozenset({"inference"}), tenant=name)
        records.append(record)
    write_key_file(path, records)
    return str(path), tokens


@pytest.fixture(scope="module")
def server(tiny_llm, keys, tmp_path_factory):
    with running_server(tiny_llm, keys_file=keys[0], batch_max_lines=50,
                        files_dir=str(tmp_path_factory.mktemp("files") / "f")) as srv:
        yield srv


def test_a_batch_answers_like_requests_sent_one_by_one(server, keys):
    client = server.client(api_key=keys[1]["alice"])
    lines = [chat_line(i, server.model, max_tokens=4 + i % 5) for i in range(24)]
    upload = client.files.create(file=("in.jsonl", jsonl(lines)), purpose="batch")
    assert upload.purpose == "batch" and upload.bytes == len(jsonl(lines))
    assert client.files.retrieve(upload.id).id == upload.id
    batch = client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions",
                                  completion_window="24h", metadata={"job": "proof"})
    assert batch.status == "validating" and batch.request_counts.total == 24
    batch = wait_done(client, batch.id)
    assert batch.status == "completed", batch
    assert (batch.request_counts.completed, batch.request_counts.failed) == (24, 0)
    assert batch.error_file_id is None and batch.metadata == {"job": "proof"}
    assert batch.in_progress_at and batch.finalizing_at and batch.completed_at
    results = read_lines(client, batch.output_file_id)
    assert [r["custom_id"] for r in results] == [line["custom_id"] for line in lines]
    for line, result in zip(lines, results):
        assert result["error"] is None and result["response"]["status_code"] == 200
        one = client.chat.completions.create(**line["body"])
        body = result["response"]["body"]
        assert body["choices"][0]["message"]["content"] == one.choices[0].message.content
        assert body["usage"]["completion_tokens"] == one.usage.completion_tokens
    listed = client.batches.list(limit=5)
    assert listed.data[0].id == batch.id
    assert client.files.retrieve(batch.output_file_id).purpose == "batch_output"


def test_lines_that_fail_go_to_the_error_file(server, keys):
    client = server.client(api_key=keys[1]["alice"])
    good = chat_line(0, server.model)
    # Valid at upload (the model is not checked there), refused when it runs: a 404 line.
    bad = {**chat_line(1, server.model), "body": {**good["body"], "model": "no-such-model"}}
    upload = client.files.create(file=("in.jsonl", jsonl([good, bad])), purpose="batch")
    batch = wait_done(client, client.batches.create(
        input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h").id)
    assert batch.status == "completed"
    assert (batch.request_counts.completed, batch.request_counts.failed) == (1, 1)
    (error,) = read_lines(client, batch.error_file_id)
    assert error["custom_id"] == "req-1" and error["response"]["status_code"] == 404
    assert error["response"]["body"]["error"]["code"] == "model_not_found"
    assert [r["custom_id"] for r in read_lines(client, batch.output_file_id)] == ["req-0"]


@pytest.mark.parametrize("line3, message", [
    ("{not json", "Line 3 of the batch file is invalid: We could not parse the JSON"),
    (json.dumps({**chat_line(3, "m"), "url": "/v1/images"}), "Line 3 of the batch file is "
     "invalid: url must be one of"),
    (json.dumps({**chat_line(3, "m"), "body": {"messages": [], "max_tokens": -1}}),
     "Line 3 of the batch file is invalid"),
    (json.dumps({**chat_line(3, "m"), "custom_id": "req-0"}), "custom_id 'req-0' is used"),
    (json.dumps({**chat_line(3, "m"), "body": {**chat_line(3, "m")["body"], "stream": True}}),
     "stream is not supported"),
])
def test_upload_checks_every_line_and_names_the_bad_one(server, keys, line3, message):
    good = [json.dumps(chat_line(i, server.model)) for i in range(2)]
    data = "\n".join([*good, line3]).encode()
    response = httpx.post(server.url + "/v1/files", files={"file": ("in.jsonl", data)},
                          data={"purpose": "batch"},
                          headers={"authorization": f"Bearer {keys[1]['alice']}"})
    error = assert_openai_error(response, 400)
    assert error["message"].startswith(message) or message in error["message"], error


def test_upload_caps_and_bad_requests(server, keys):
    client = server.client(api_key=keys[1]["alice"])
    with pytest.raises(openai.BadRequestError, match="at most 50"):
        client.files.create(file=("big.jsonl", jsonl([chat_line(i, "m") for i in range(51)])),
                            purpose="batch")
    with pytest.raises(openai.BadRequestError, match="purpose"):
        client.files.create(file=("in.jsonl", jsonl([chat_line(0, "m")])),
                            purpose="fine-tune")
    upload = client.files.create(file=("in.jsonl", jsonl([chat_line(0, "m")])),
                                 purpose="batch")
    with pytest.raises(openai.BadRequestError, match="endpoint"):
        client.batches.create(input_file_id=upload.id, endpoint="/v1/completions",
                              completion_window="24h")
    with pytest.raises(openai.BadRequestError):
        client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions",
                              completion_window="1h")


def test_malformed_uploads_are_clear_400s(server, keys):
    auth = {"authorization": f"Bearer {keys[1]['alice']}"}
    url = server.url + "/v1/files"
    assert_openai_error(httpx.post(url, json={"purpose": "batch"}, headers=auth), 415)
    assert_openai_error(httpx.post(url, data={"purpose": "batch"}, headers={
        **auth, "content-type": "multipart/form-data; boundary=x"}), 400)
    error = assert_openai_error(httpx.post(url, files={"other": ("a", b"x")},
                                           data={"purpose": "batch"}, headers=auth), 400)
    assert error["param"] == "file"
    error = assert_openai_error(httpx.post(url, files={"file": ("a", b"\xff\xfe\x00")},
                                           data={"purpose": "batch"}, headers=auth), 400)
    assert "UTF-8" in error["message"]
    assert_openai_error(httpx.post(url, files={"file": ("a", b"\n\n")},
                                   data={"purpose": "batch"}, headers=auth), 400)
    assert_openai_error(httpx.post(server.url + "/v1/batches", json={
        "input_file_id": "file-x", "endpoint": "/v1/chat/completions",
        "completion_window": "24h", "extra": 1}, headers=auth), 400)
    assert_openai_error(httpx.get(server.url + "/v1/batches?limit=0", headers=auth), 400)
    assert_openai_error(httpx.get(server.url + "/v1/files/..%2F..%2Fetc", headers=auth), 404)
    assert httpx.get(server.url + "/health").status_code == 200


def test_files_and_batches_belong_to_their_key(server, keys):
    alice = server.client(api_key=keys[1]["alice"])
    bob = server.client(api_key=keys[1]["bob"])
    upload = alice.files.create(file=("in.jsonl", jsonl([chat_line(0, server.model)])),
                                purpose="batch")
    batch = alice.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions",
                                 completion_window="24h")
    for call in (lambda: bob.files.retrieve(upload.id),
                 lambda: bob.files.content(upload.id),
                 lambda: bob.files.delete(upload.id),
                 lambda: bob.batches.retrieve(batch.id),
                 lambda: bob.batches.cancel(batch.id),
                 lambda: bob.batches.create(input_file_id=upload.id,
                                            endpoint="/v1/chat/completions",
                                            completion_window="24h")):
        with pytest.raises(openai.NotFoundError):
            call()
    assert batch.id not in [b.id for b in bob.batches.list().data]
    assert upload.id in [f.id for f in alice.files.list(purpose="batch").data]
    assert upload.id not in [f.id for f in bob.files.list().data]
    assert wait_done(alice, batch.id).status == "completed"
    assert alice.files.delete(upload.id).deleted
    with pytest.raises(openai.NotFoundError):
        alice.files.retrieve(upload.id)
    response = httpx.get(server.url + "/v1/batches", headers={"authorization": "Bearer nope"})
    assert_openai_error(response, 401)


def test_cancel_stops_a_batch(server, keys):
    client = server.client(api_key=keys[1]["alice"])
    lines = [chat_line(i, server.model, max_tokens=200) for i in range(40)]
    for line in lines:
        line["body"]["ignore_eos"] = True
    upload = client.files.create(file=("in.jsonl", jsonl(lines)), purpose="batch")
    batch = client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions",
                                  completion_window="24h")
    # Its lines run in the engine's background class (engine.scheduler).
    scheduler = server.engine.client.core.scheduler
    deadline = time.monotonic() + 30
    while not any(is_background(s.priority) for s in list(scheduler.running)):
        assert time.monotonic() < deadline, "no batch line ever ran as background work"
        time.sleep(0.01)
    cancelling = client.batches.cancel(batch.id)
    assert cancelling.status in ("cancelling", "cancelled")
    batch = wait_done(client, batch.id)
    assert batch.status == "cancelled" and batch.cancelled_at
    assert batch.request_counts.completed < 40
    with pytest.raises(openai.BadRequestError):
        client.batches.cancel(wait_done(client, client.batches.create(
            input_file_id=client.files.create(file=("x.jsonl", jsonl(lines[:1])),
                                              purpose="batch").id,
            endpoint="/v1/chat/completions", completion_window="24h").id).id)


def test_a_batch_past_its_window_expires_its_unanswered_lines(tiny_llm, tmp_path):
    with running_server(tiny_llm, batch_window_s=0.0, files_dir=str(tmp_path)) as srv:
        client = srv.client()
        upload = client.files.create(file=("in.jsonl", jsonl(
            [chat_line(i, srv.model) for i in range(3)])), purpose="batch")
        batch = wait_done(client, client.batches.create(
            input_file_id=upload.id, endpoint="/v1/chat/completions",
            completion_window="24h").id)
        assert batch.status == "expired" and batch.expired_at
        assert (batch.request_counts.completed, batch.request_counts.failed) == (0, 3)
        errors = read_lines(client, batch.error_file_id)
        assert [e["error"]["code"] for e in errors] == ["batch_expired"] * 3
        assert all(e["response"] is None for e in errors)


def test_files_are_private_and_encrypted_at_rest(tiny_llm, tmp_path):
    key = os.urandom(32)
    files, db = tmp_path / "files", str(tmp_path / "usage.db")
    secret = "the launch code is 0000"
    line = {**chat_line(0, "tiny"), "body": {**chat_line(0, "tiny")["body"],
                                             "messages": [{"role": "user", "content": secret}]}}
    with running_server(tiny_llm, data_key=key, files_dir=str(files), usage_db=db) as srv:
        client = srv.client()
        line["body"]["model"] = srv.model
        upload = client.files.create(file=("in.jsonl", jsonl([line])), purpose="batch")
        batch = wait_done(client, client.batches.create(
            input_file_id=upload.id, endpoint="/v1/chat/completions",
            completion_window="24h").id)
        assert batch.status == "completed"
        assert secret in client.files.content(upload.id).text  # decrypted for its owner
    assert oct(files.stat().st_mode & 0o777) == "0o700"
    for path in files.iterdir():
        assert oct(path.stat().st_mode & 0o777) == "0o600"
        assert secret.encode() not in path.read_bytes()
        assert b"custom_id" not in path.read_bytes()
    raw_db = b"".join(p.read_bytes() for p in tmp_path.glob("usage.db*"))
    assert secret.encode() not in raw_db and b"launch code" not in raw_db
    # Restarted with another key: a clear error, not garbage and not a crash.
    with running_server(tiny_llm, data_key=os.urandom(32), files_dir=str(files),
                        usage_db=db) as srv:
        response = httpx.get(f"{srv.url}/v1/files/{upload.id}/content")
        error = assert_openai_error(response, 500)
        assert error["code"] == "data_key_error" and "CORMORANT_DATA_KEY" in error["message"]
        assert httpx.get(srv.url + "/health").status_code == 200
    assert base64.b64encode(key)  # the key itself never reached a file
    assert all(key not in p.read_bytes() for p in [*files.iterdir(), *tmp_path.glob("usage.db*")])


def test_batch_tokens_count_in_usage_under_their_own_quota(tiny_llm, tmp_path):
    """The key's interactive rpm (3) is untouched by a 6-line batch, which has its own
    account; every batch token shows in /v1/usage."""
    with running_server(tiny_llm, default_rpm=3, files_dir=str(tmp_path)) as srv:
        client = srv.client()
        lines = [chat_line(i, srv.model, max_tokens=5) for i in range(6)]
        upload = client.files.create(file=("in.jsonl", jsonl(lines)), purpose="batch")
        batch = wait_done(client, client.batches.create(
            input_file_id=upload.id, endpoint="/v1/chat/completions",
            completion_window="24h").id)
        assert batch.status == "completed" and batch.request_counts.completed == 6
        results = read_lines(client, batch.output_file_id)
        expected = sum(r["response"]["body"]["usage"]["total_tokens"] for r in results)
        for _ in range(3):  # the key's own minute is still whole
            client.chat.completions.create(**lines[0]["body"])
        with pytest.raises(openai.RateLimitError):
            client.chat.completions.create(**lines[0]["body"])
        deadline = time.monotonic() + 10
        while True:
            rows = httpx.get(srv.url + "/v1/usage").json()["data"]
            total = sum(r["total_tokens"] for r in rows)
            if total >= expected or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        # The batch's tokens plus the three interactive requests' (each that of line 0).
        one = results[0]["response"]["body"]["usage"]["total_tokens"]
        assert total == expected + 3 * one


def test_the_openapi_document_lists_the_batch_routes(server, keys):
    doc = httpx.get(server.url + "/openapi.json",
                    headers={"authorization": f"Bearer {keys[1]['alice']}"}).json()
    for path in ("/v1/files", "/v1/files/{file_id}", "/v1/files/{file_id}/content",
                 "/v1/batches", "/v1/batches/{batch_id}", "/v1/batches/{batch_id}/cancel"):
        assert path in doc["paths"], path
    upload = doc["paths"]["/v1/files"]["post"]["requestBody"]["content"]
    assert "multipart/form-data" in upload
    assert "BatchCreateRequest" in doc["components"]["schemas"]


def test_an_embeddings_batch_matches_the_route(tiny_llm, tmp_path):
    from cormorant.frontend.embedder import Embedder
    from models.test_bert import save_tiny_bert_classifier

    encoder = Embedder.from_path(str(save_tiny_bert_classifier(tmp_path / "bert")),
                                 name="tiny-bert", device="cpu")
    try:
        with running_server(tiny_llm, encoders=[encoder], files_dir=str(tmp_path / "f")) as srv:
            client = srv.client()
            inputs = ["a cat", ["two", "inputs"], "a longer sentence about dogs"]
            lines = [{"custom_id": f"e{i}", "method": "POST", "url": "/v1/embeddings",
                      "body": {"model": "tiny-bert", "input": text}}
                     for i, text in enumerate(inputs)]
            upload = client.files.create(file=("in.jsonl", jsonl(lines)), purpose="batch")
            batch = wait_done(client, client.batches.create(
                input_file_id=upload.id, endpoint="/v1/embeddings",
                completion_window="24h").id)
            assert batch.status == "completed" and batch.request_counts.completed == 3
            for line, result in zip(lines, read_lines(client, batch.output_file_id)):
                one = client.embeddings.create(**line["body"], encoding_format="float")
                body = result["response"]["body"]
                got = [x for d in body["data"] for x in d["embedding"]]
                assert len(body["data"]) == len(one.data)
                assert got == pytest.approx([x for d in one.data for x in d.embedding],
                                            abs=1e-6)
                assert body["usage"]["prompt_tokens"] == one.usage.prompt_tokens
    finally:
        encoder.shutdown()
