"""Several models and versions in one server (issue #6): SmolLM2, tiny random models and
MiniLM served at once, versions named in every response, canary splits, hot swaps under
load, failed loads, traversal refused, fallbacks. All over real HTTP against the real app."""
from __future__ import annotations

import asyncio
import collections
import json

import httpx
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from multi_model import admin, loaded, status


def _post(server, token: str, path: str, body: dict, **headers) -> httpx.Response:
    return httpx.post(server.url + path, json=body, timeout=300,
                      headers={"authorization": f"Bearer {token}", **headers})


def test_three_kinds_of_model_in_one_server(multi_server, multi_keys):
    client = multi_server.client(api_key=multi_keys.alice)
    # SmolLM2 through the alias `chat`: a real answer, stamped with the version.
    raw = client.chat.completions.with_raw_response.create(
        model="chat", messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=12, temperature=0)
    out = raw.parse()
    assert "Paris" in out.choices[0].message.content
    assert out.model == "smollm2@1" and raw.headers["x-model-version"] == "smollm2@1"
    assert out.system_fingerprint.startswith("smollm2@1:")
    assert raw.headers["x-system-fingerprint"] == out.system_fingerprint
    # The tiny model by exact id, and by bare name (its latest registered version, tiny@2,
    # which is loaded on demand).
    assert client.completions.create(model="tiny@1", prompt="hello", max_tokens=3).model \
        == "tiny@1"
    assert client.completions.create(model="tiny", prompt="hello", max_tokens=3).model \
        == "tiny@2"
    # MiniLM beside them.
    emb = client.embeddings.create(model="minilm@1", input=["a cat", "a dog"])
    vectors = np.array([d.embedding for d in emb.data])
    assert vectors.shape == (2, 384) and np.allclose(np.linalg.norm(vectors, axis=1), 1, 1e-5)
    # Wrong kind: a clear 400, not a crash.
    response = _post(multi_server, multi_keys.alice, "/v1/embeddings",
                     {"model": "chat", "input": "x"})
    assert response.status_code == 400 and "generation model" in response.text
    listed = {m.id: m for m in client.models.list().data}
    assert {"smollm2@1", "tiny@1", "tiny@2", "minilm@1", "chat", "canary"} <= set(listed)
    assert listed["canary"].model_extra["alias_of"] == {"tiny@1": 0.9, "tiny@2": 0.1}
    assert listed["tiny@1"].model_extra["version"] == "1"


def test_metrics_carry_model_and_version(multi_server, multi_keys):
    _post(multi_server, multi_keys.alice, "/v1/completions",
          {"model": "tiny@1", "prompt": "hi", "max_tokens": 2})
    text = httpx.get(multi_server.url + "/metrics",
                     headers={"authorization": f"Bearer {multi_keys.admin}"}).text
    labels = {(s.labels.get("model_name"), s.labels.get("model_version"))
              for f in text_string_to_metric_families(text) if f.name == "vllm:generation_tokens"
              for s in f.samples}
    assert ("tiny", "1") in labels and ("smollm2", "1") in labels


def test_canary_split_is_90_10_and_sticky(multi_server, multi_keys):
    async def run() -> list[tuple[str, str]]:
        limits = httpx.Limits(max_connections=16)
        async with httpx.AsyncClient(base_url=multi_server.url, timeout=300, limits=limits,
                                     headers={"authorization": f"Bearer {multi_keys.bob}"}
                                     ) as http:
            sem = asyncio.Semaphore(16)

            async def one(user: str) -> tuple[str, str]:
                async with sem:
                    r = await http.post("/v1/completions", json={
                        "model": "canary", "prompt": "hi", "max_tokens": 1, "user": user})
                    assert r.status_code == 200, r.text
                    return user, r.headers["x-model-version"]

            users = [f"user-{i}" for i in range(1000)]
            return await asyncio.gather(*(one(u) for u in users + users[:100]))

    results = asyncio.run(run())
    first = dict(results[:1000])
    counts = collections.Counter(first.values())
    assert set(counts) == {"tiny@1", "tiny@2"}
    assert abs(counts["tiny@2"] / 1000 - 0.10) <= 0.05, counts
    # Sticky: the same user always lands on the same version.
    assert all(first[user] == version for user, version in results[1000:])


def test_hot_swap_under_20_streams(multi_server, multi_keys):
    """20 streams on alias `live` while it is swapped from swap@1 to swap@2 (loaded and
    warmed first): none fails, each is stamped with exactly one version, swap@1 drains and
    is unloaded."""
    async def stream(http: httpx.AsyncClient, i: int) -> set[str]:
        body = {"model": "live", "prompt": f"stream {i}", "max_tokens": 160,
                "ignore_eos": True, "stream": True, "temperature": 0.7, "seed": i}
        versions = set()
        async with http.stream("POST", "/v1/completions", json=body) as r:
            assert r.status_code == 200, await r.aread()
            versions.add(r.headers["x-model-version"])
            done = False
            async for line in r.aiter_lines():
                if line == "data: [DONE]":
                    done = True
                elif line.startswith("data: "):
                    chunk = json.loads(line[6:])
                    assert "error" not in chunk, chunk
                    versions.add(chunk["model"])
                    versions.add(chunk["system_fingerprint"].split(":")[0])
            assert done
        return versions

    async def run():
        async with httpx.AsyncClient(base_url=multi_server.url, timeout=300,
                                     headers={"authorization": f"Bearer {multi_keys.alice}"}
                                     ) as http:
            before = [asyncio.ensure_future(stream(http, i)) for i in range(20)]
            await asyncio.sleep(0.5)
            swap = asyncio.ensure_future(asyncio.to_thread(
                admin, multi_server, multi_keys, "PUT", "/admin/aliases/live",
                {"targets": {"swap@2": 100}}))
            swapped = await swap
            assert swapped.status_code == 200, swapped.text
            # The swap finished while the first streams were still running on swap@1.
            assert sum(not task.done() for task in before) >= 5
            after = [asyncio.ensure_future(stream(http, 100 + i)) for i in range(5)]
            return await asyncio.gather(*before), await asyncio.gather(*after)

    before, after = asyncio.run(run())
    assert all(len(v) == 1 for v in before + after)  # one version per response
    assert {v.pop() for v in before} == {"swap@1"}
    assert {v.pop() for v in after} == {"swap@2"}
    state = multi_server.app.state.cormorant
    asyncio.run_coroutine_threadsafe(state.pool.wait_retired(), _loop(multi_server)).result(60)
    assert "swap@1" not in loaded(multi_server, multi_keys)
    assert status(multi_server, multi_keys)["aliases"]["live"] == {"swap@2": 100.0}


def _loop(server) -> asyncio.AbstractEventLoop:
    """The event loop uvicorn runs the app on (its lifespan task lives there)."""
    return server.app.state.cormorant._tasks[0].get_loop()


def test_failed_load_keeps_the_old_version_serving(multi_server, multi_keys):
    made = admin(multi_server, multi_keys, "POST", "/admin/models",
                 {"name": "broken", "version": "1", "source": "broken", "load": False})
    assert made.status_code == 201, made.text
    response = admin(multi_server, multi_keys, "PUT", "/admin/aliases/chat",
                     {"targets": {"broken@1": 100}})
    assert response.status_code == 503
    assert "broken@1 could not be loaded" in response.json()["error"]["message"]
    assert status(multi_server, multi_keys)["aliases"]["chat"] == {"smollm2@1": 100.0}
    out = multi_server.client(api_key=multi_keys.alice).chat.completions.create(
        model="chat", messages=[{"role": "user", "content": "Hi"}], max_tokens=4)
    assert out.model == "smollm2@1"
    reload = admin(multi_server, multi_keys, "POST", "/admin/models/broken@1/load")
    assert reload.status_code == 503 and "broken@1" not in loaded(multi_server, multi_keys)


def test_sources_are_ids_under_the_roots(multi_server, multi_keys):
    for source in ("../minilm", "/etc/passwd", "tiny-llama/../../x", "~/models",
                   "..\\x", "nothing-here"):
        response = admin(multi_server, multi_keys, "POST", "/admin/models",
                         {"name": "evil", "version": "1", "source": source})
        assert response.status_code == 400, (source, response.text)
    assert "evil@1" not in {m["id"] for m in status(multi_server, multi_keys)["models"]}
    # The admin API needs the admin scope.
    response = _post(multi_server, multi_keys.alice, "/admin/models",
                     {"name": "x", "version": "1", "source": "tiny-llama"})
    assert response.status_code == 403


def test_overloaded_primary_is_answered_by_its_fallback(multi_server, multi_keys):
    """busy@1 runs one sequence at a time and admits one waiting request; the rest are
    refused there and answered by tiny@1, with a header saying so."""
    async def run():
        async with httpx.AsyncClient(base_url=multi_server.url, timeout=300,
                                     headers={"authorization": f"Bearer {multi_keys.alice}"}
                                     ) as http:
            async def one(i: int) -> httpx.Response:
                return await http.post("/v1/completions", json={
                    "model": "busy@1", "prompt": f"load {i}", "max_tokens": 32,
                    "ignore_eos": True})
            return await asyncio.gather(*(one(i) for i in range(8)))

    responses = asyncio.run(run())
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
    by = collections.Counter(r.headers["x-model-version"] for r in responses)
    assert by["tiny@1"] >= 1 and by["busy@1"] >= 1, by
    for r in responses:
        if r.headers["x-model-version"] == "tiny@1":
            assert r.headers["x-fallback-from"] == "busy@1" and r.json()["model"] == "tiny@1"


def test_a_primary_that_fails_before_its_first_token_is_retried_on_the_fallback(
        multi_server, multi_keys):
    """The primary's engine dies (shut down under the server): the request is retried once on
    the next candidate, and the answer says which model stood in."""
    made = admin(multi_server, multi_keys, "POST", "/admin/models",
                 {"name": "doomed", "version": "1", "source": "tiny-llama", "dtype": "float32",
                  "device": "cpu", "engine": {"num_kv_blocks": 64, "max_model_len": 256},
                  "fallbacks": ["tiny@1"]})
    assert made.status_code == 201, made.text
    multi_server.app.state.cormorant.pool.deployments["doomed@1"].served.raw.shutdown()
    for stream in (False, True):
        response = _post(multi_server, multi_keys.alice, "/v1/completions",
                         {"model": "doomed@1", "prompt": "hello", "max_tokens": 4,
                          "stream": stream})
        assert response.status_code == 200, response.text
        assert response.headers["x-fallback-from"] == "doomed@1"
        assert response.headers["x-model-version"] == "tiny@1"
    # No fallback configured: the dead engine's 503 reaches the client as it is.
    admin(multi_server, multi_keys, "POST", "/admin/models",
          {"name": "doomed2", "version": "1", "source": "tiny-llama", "dtype": "float32",
           "device": "cpu", "engine": {"num_kv_blocks": 64, "max_model_len": 256}})
    multi_server.app.state.cormorant.pool.deployments["doomed2@1"].served.raw.shutdown()
    response = _post(multi_server, multi_keys.alice, "/v1/completions",
                     {"model": "doomed2@1", "prompt": "hello", "max_tokens": 4})
    assert response.status_code == 503
