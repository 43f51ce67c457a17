"""Scale-out on a real two-node Ray cluster: two replicas of the tiny Llama behind the ingress,
driven by the official openai client through Serve's HTTP proxy.

One cluster for the whole module (scaleout/ray_cluster.py). The first application has two
fixed replicas, one per node: greedy output equals transformers', prompts sharing a prefix
land where it is cached while unrelated ones spread, /metrics shows each replica, and killing
a replica under 100 streams loses no request that had not started. The second application
autoscales (1 to 2 and back, then to zero) behind two ingress replicas that share one quota
and one response cache through Redis and one usage table in PostgreSQL (the
x-cormorant-ingress header tells which ingress replica answered); the replica the autoscaler
removes drains its stream to the end first (scaleout/drain_streams.py). Last, `cormorant
serve --ray` joins the cluster by address and serves.
"""
from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "gateway"))
from drain_streams import LiveStream, one_stream_on_each_replica, until  # noqa: E402
from ray_cluster import (APP, ENV, deploy, engine_config, metric_values,  # noqa: E402
                         replica_actors, replica_names, running_replicas, two_node_cluster)
from postgres_fixture import create_database, postgres_server  # noqa: E402,F401
from redis_fixture import redis_server  # noqa: E402,F401
from support import store_keys, wait_for, wait_http_ready  # noqa: E402
from tiny import load_reference, save_model  # noqa: E402

from cormorant.scaleout.options import ScaleoutOptions  # noqa: E402
from cormorant.scaleout.served_by import INGRESS_HEADER  # noqa: E402
from cormorant.server.config import ServerConfig  # noqa: E402

PREFIX_LEN = 96  # six full 16-token blocks


@pytest.fixture(scope="module")
def ray_cluster():
    with two_node_cluster() as cluster:
        yield cluster


@pytest.fixture(scope="module")
def fixed(ray_cluster, tiny_llama):
    """Two replicas, one per node, one ingress."""
    from ray import serve

    deploy(ray_cluster.url, tiny_llama, ScaleoutOptions(
        num_replicas=2, max_replicas_per_node=1, num_cpus_per_replica=1,
        num_cpus_per_ingress=0.1, health_check_period_s=1.0, graceful_shutdown_timeout_s=10))
    yield ray_cluster.url
    serve.delete(APP)


def _client(url: str, key: str = "unused", aio: bool = False):
    cls = openai.AsyncOpenAI if aio else openai.OpenAI
    return cls(base_url=url + "/v1", api_key=key, max_retries=0, timeout=120)


def _ids(rng: random.Random, n: int) -> list[int]:
    return [rng.randrange(3, 500) for _ in range(n)]


def test_greedy_output_is_transformers_through_the_replicas(fixed, tiny_llama):
    reference = load_reference(Path(tiny_llama))
    rng = random.Random(1)
    client = _client(fixed)
    for prompt in (_ids(rng, 12), _ids(rng, 30)):
        out = client.completions.create(model="tiny", prompt=prompt, max_tokens=8,
                                        temperature=0, extra_body={"ignore_eos": True})
        with torch.no_grad():
            expected = reference.generate(torch.tensor([prompt]), max_new_tokens=8,
                                          do_sample=False)[0, len(prompt):].tolist()
        assert out.choices[0].text == reference_text(tiny_llama, expected)
        assert out.usage.completion_tokens == 8


def reference_text(model: str, ids: list[int]) -> str:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model).decode(ids, skip_special_tokens=True)


def test_shared_prefixes_find_their_replica_and_unrelated_prompts_spread(fixed):
    rng = random.Random(2)
    prefixes = [_ids(rng, PREFIX_LEN) for _ in range(6)]
    before = metric_values(fixed, "cormorant_replica_prefix_cache_queries_total")

    async def first_round():
        client = _client(fixed, aio=True)
        return await asyncio.gather(*(client.completions.create(
            model="tiny", prompt=p + _ids(rng, 5), max_tokens=16, temperature=0,
            extra_body={"ignore_eos": True}) for p in prefixes))

    firsts = asyncio.run(first_round())
    assert all(r.usage.prompt_tokens_details.cached_tokens == 0 for r in firsts)
    after = metric_values(fixed, "cormorant_replica_prefix_cache_queries_total")
    assert len(after) == 2, after  # both replicas report under their own label
    grew = [r for r in after if after[r] > before.get(r, 0.0)]
    assert len(grew) == 2, (before, after)  # the six unrelated prompts went to both replicas
    client = _client(fixed)
    for p in prefixes:  # the same prefix, a new ending: the replica that computed it answers
        second = client.completions.create(model="tiny", prompt=p + _ids(rng, 7),
                                           max_tokens=2, temperature=0)
        assert second.usage.prompt_tokens_details.cached_tokens >= PREFIX_LEN
    running = metric_values(fixed, "cormorant_replica_num_requests_running")
    assert set(running) == set(after) and all(v == 0 for v in running.values())


async def _stream(client, prompt: list[int], record: dict) -> None:
    stream = await client.completions.create(model="tiny", prompt=prompt, max_tokens=24,
                                             temperature=0, stream=True,
                                             extra_body={"ignore_eos": True})
    async for chunk in stream:
        record["started"] = True
        record["text"] += chunk.choices[0].text if chunk.choices else ""
        if chunk.choices and chunk.choices[0].finish_reason:
            record["finish"] = chunk.choices[0].finish_reason


async def _load_and_kill(url: str, num: int) -> list[dict]:
    import ray

    client = _client(url, aio=True)
    rng = random.Random(3)
    records = [{"started": False, "text": "", "finish": None, "error": None}
               for _ in range(num)]

    async def one(i: int) -> None:
        try:
            await asyncio.wait_for(_stream(client, _ids(rng, 20), records[i]), 180)
        except asyncio.TimeoutError:
            records[i]["error"] = "hung"
        except Exception as exc:  # an error event or status: recorded, judged below
            records[i]["error"] = repr(exc)

    tasks = [asyncio.ensure_future(one(i)) for i in range(num)]
    # Kill a replica while it has requests running and others still waiting in its engine.
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        waiting = await asyncio.to_thread(metric_values, url,
                                          "cormorant_replica_num_requests_waiting")
        busy = [rid for rid, n in waiting.items() if n >= 3]
        if busy and sum(r["started"] for r in records) >= 5:
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("no replica ever had requests waiting")
    ray.kill(replica_actors(busy[0])[0], no_restart=True)
    await asyncio.gather(*tasks)
    return records


def test_killing_a_replica_under_load_loses_no_request_that_had_not_started(fixed):
    retries_before = _retries(fixed)
    records = asyncio.run(_load_and_kill(fixed, 100))
    assert not [r for r in records if r["error"] == "hung"]
    unstarted_failures = [r for r in records if r["error"] and not r["started"]]
    assert not unstarted_failures, unstarted_failures[:3]
    finished = [r for r in records if not r["error"]]
    assert all(r["finish"] == "length" for r in finished)
    broken = [r for r in records if r["error"]]
    assert len(finished) + len(broken) == 100 and len(finished) >= 50
    # Requests queued on the dead replica were sent again, not lost.
    assert _retries(fixed) > retries_before, broken[:2]
    # Serve replaces the dead replica; the service answers on.
    wait_for(lambda: running_replicas() == 2, 180, "the replica's replacement", 0.5)
    out = _client(fixed).completions.create(model="tiny", prompt=[5, 6, 7], max_tokens=3)
    assert out.usage.completion_tokens == 3


def _retries(url: str) -> float:
    text = httpx.get(url + "/metrics", timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("cormorant_replica_retries_total{"))


LONG_CONTEXT = 8192  # the autoscaled engines' context: streams that outlast a down-scaling
DRAIN_STREAM_S = 15.0  # how long a drain stream is made to run, at the measured token rate


@dataclass
class Autoscaled:
    url: str
    tokens: dict[str, str]  # key name -> bearer token
    ids: dict[str, str]  # key name -> key id
    usage_db: str  # the one PostgreSQL database both ingress replicas record usage in

    def headers(self, key: str) -> dict[str, str]:
        return {"authorization": f"Bearer {self.tokens[key]}"}


@pytest.fixture(scope="module")
def autoscaled(ray_cluster, tmp_path_factory, redis_server, postgres_server):  # noqa: F811
    """Engines autoscaled between 0 and 2 (short delays; one at start; the tiny Llama with a
    long context) behind two ingress replicas that share quotas and the response cache
    through one Redis and record usage in one PostgreSQL database. Keys: `limited` (6
    requests a minute), `load`, `cache`, `meter` (inference), `admin` and `scrape` (metrics)."""
    import redis
    from ray import serve

    redis_url = f"redis://127.0.0.1:{redis_server.port}/7"
    cache_url = f"redis://127.0.0.1:{redis_server.port}/8"
    for url in (redis_url, cache_url):
        redis.Redis.from_url(url).flushdb()
    usage_db = create_database(postgres_server)
    model = str(save_model(tmp_path_factory.mktemp("long-llama"), "llama",
                           max_position_embeddings=LONG_CONTEXT))
    db = str(tmp_path_factory.mktemp("keys") / "keys.db")
    _, tokens, ids = store_keys(db, [("limited", {"inference"}, {"rpm": 6}),
                                     ("load", {"inference"}, {}), ("cache", {"inference"}, {}),
                                     ("meter", {"inference"}, {}), ("admin", {"admin"}, {}),
                                     ("scrape", {"metrics"}, {})])
    serve.delete(APP)  # the fixed application's replicas make room
    deploy(ray_cluster.url, model, ScaleoutOptions(
        min_replicas=0, max_replicas=2, target_ongoing_requests=2, upscale_delay_s=0.5,
        downscale_delay_s=2.0, downscale_to_zero_delay_s=10.0, cold_start_s=7,
        metrics_interval_s=0.5, max_replicas_per_node=1,
        num_cpus_per_replica=1, num_ingress_replicas=2, num_cpus_per_ingress=0.1,
        graceful_shutdown_timeout_s=60), ServerConfig(
            keys_db=db, redis_url=redis_url, response_cache=True,
            response_cache_redis_url=cache_url, usage_db=usage_db),
        engine=engine_config(model, max_num_seqs=8, max_model_len=LONG_CONTEXT,
                             num_blocks=4096))
    yield Autoscaled(ray_cluster.url, tokens, ids, usage_db)
    serve.delete(APP)


def _post(app: Autoscaled, key: str, body: dict) -> httpx.Response:
    """POST /v1/completions on a new connection, as an independent client (Serve's proxy picks
    the ingress replica); a 503 of a cold start (scaled to zero meanwhile) is waited out."""
    deadline = time.monotonic() + 180
    while True:
        r = httpx.post(app.url + "/v1/completions", headers=app.headers(key), json=body,
                       timeout=120)
        if r.status_code != 503 or time.monotonic() > deadline:
            return r
        time.sleep(1.0)


def _replica_ids() -> set[str]:
    """The engine replicas' ids (the `replica` label), from their actors' names."""
    return {name.rsplit("#", 1)[1] for name in replica_names()}


def _listed_by_each_ingress(app: Autoscaled, timeout: float) -> set[str]:
    """Scrape /metrics on new connections (Serve's proxy picks the ingress replica) until
    both ingress replicas list exactly the engine replicas running now; returns those."""
    listed: dict[str, set] = {}  # ingress replica -> the replicas it listed last

    def both_list_them() -> set[str] | None:
        r = httpx.get(app.url + "/metrics", headers=app.headers("scrape"), timeout=30)
        if r.status_code != 200:
            raise RuntimeError(f"/metrics: {r.status_code} {r.text}")
        listed[r.headers[INGRESS_HEADER]] = {
            line.split('replica="', 1)[1].split('"', 1)[0] for line in r.text.splitlines()
            if line.startswith("cormorant_replica_num_requests_running{")}
        running = _replica_ids()
        ok = running and len(listed) == 2 and all(v == running for v in listed.values())
        return running if ok else None

    try:
        return wait_for(both_list_them, timeout, "", 0.1)
    except AssertionError:
        raise AssertionError(f"running {_replica_ids()}, listed {listed}") from None


def test_each_ingress_lists_every_engine_replica_it_never_streamed_from(autoscaled):
    """Before any generation (the fixture only asked /ready), /metrics through either
    ingress replica lists the running engine replica: the routers' live view, not streams."""
    if running_replicas() == 0:  # scaled to zero already: a cold 503 wakes one, unstreamed
        httpx.post(autoscaled.url + "/v1/completions", headers=autoscaled.headers("load"),
                   json={"model": "tiny", "prompt": "Hi", "max_tokens": 1}, timeout=60)
    wait_for(lambda: running_replicas() == 1, 120, "a running replica", 0.5)
    assert len(_listed_by_each_ingress(autoscaled, 30)) == 1


def test_quotas_hold_across_ingress_replicas(autoscaled):
    """6 requests a minute in all, whichever ingress replica answers: once both have answered
    (Serve's proxy spreads new connections), the pattern is impossible with a quota each."""
    statuses, ingresses = [], set()
    while len(statuses) < 10 or (len(ingresses) < 2 and len(statuses) < 40):
        r = httpx.post(autoscaled.url + "/v1/completions", timeout=60,
                       headers=autoscaled.headers("limited"),
                       json={"model": "tiny", "prompt": "Hello", "max_tokens": 2})
        statuses.append(r.status_code)
        ingresses.add(r.headers[INGRESS_HEADER])  # 429s carry it too
    assert len(ingresses) == 2, "one ingress replica took all requests"
    assert statuses == [200] * 6 + [429] * (len(statuses) - 6)


CACHED = {"model": "tiny", "prompt": list(range(40, 60)), "max_tokens": 8, "temperature": 0,
          "ignore_eos": True}  # a request the response cache keeps (greedy)


def test_a_response_cached_through_one_ingress_is_served_from_redis_by_the_other(autoscaled):
    """The first answer is a miss; every later one, the other ingress replica's first answer
    included, is a hit: that replica had never seen the request, so its hit came from Redis."""
    body = CACHED
    answers = []  # (ingress replica, x-cache, text)
    while len({a[0] for a in answers}) < 2 and len(answers) < 40:
        r = _post(autoscaled, "cache", body)
        assert r.status_code == 200, r.text
        answers.append((r.headers[INGRESS_HEADER], r.headers["x-cache"],
                        r.json()["choices"][0]["text"]))
    assert len({a[0] for a in answers}) == 2, f"one ingress replica took all of {answers}"
    assert answers[0][1] == "miss"
    assert [a[1] for a in answers[1:]] == ["hit"] * (len(answers) - 1), answers
    assert len({a[2] for a in answers}) == 1


def test_usage_through_both_ingress_replicas_lands_in_one_postgres_database(autoscaled):
    """Requests through both ingress replicas; GET /v1/usage through each shows their sum,
    which neither could know alone, and so does the database itself."""
    import psycopg

    body = {"model": "tiny", "prompt": [7, 8, 9, 10, 11], "max_tokens": 3, "ignore_eos": True}
    served: dict[str, int] = {}  # ingress replica -> requests it answered
    expected = {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0}
    while (len(served) < 2 or sum(served.values()) < 4) and sum(served.values()) < 40:
        r = _post(autoscaled, "meter", body)  # sampled (temperature 1): never cached
        assert r.status_code == 200 and r.headers["x-cache"] == "miss", r.text
        ingress = r.headers[INGRESS_HEADER]
        served[ingress] = served.get(ingress, 0) + 1
        expected["requests"] += 1
        for field in ("prompt_tokens", "completion_tokens"):
            expected[field] += r.json()["usage"][field]
    assert len(served) == 2, f"one ingress replica took all requests: {served}"
    confirmed: set[str] = set()

    def both_ingresses_show_the_sum() -> bool:
        r = httpx.get(autoscaled.url + "/v1/usage", params={"key_id": autoscaled.ids["meter"]},
                      headers=autoscaled.headers("admin"), timeout=30)
        assert r.status_code == 200, r.text
        rows = r.json()["data"]
        if {k: sum(row[k] for row in rows) for k in expected} == expected:
            confirmed.add(r.headers[INGRESS_HEADER])
        return confirmed == set(served)

    wait_for(both_ingresses_show_the_sum, 60, "both ingress replicas to report the sum", 0.2)
    with psycopg.connect(autoscaled.usage_db) as conn:
        row = conn.execute("SELECT sum(requests), sum(prompt_tokens), sum(completion_tokens) "
                           "FROM usage_daily WHERE key_id = %s",
                           (autoscaled.ids["meter"],)).fetchone()
    assert list(row) == list(expected.values())


async def _scale_up_then_down_under_streams(app: Autoscaled) -> list[LiveStream]:
    """12 workers keep the engines busy until 2 replicas run; then three holder streams keep
    them needed while one drain stream is placed on each replica; closing the holders leaves
    2 ongoing requests (1 replica's worth): the autoscaler stops one replica, streaming."""
    stop = asyncio.Event()
    client = _client(app.url, app.tokens["load"], aio=True)
    rng = random.Random(4)

    async def worker() -> None:
        while not stop.is_set():
            try:
                await client.completions.create(model="tiny", prompt=_ids(rng, 16),
                                                max_tokens=64, temperature=0,
                                                extra_body={"ignore_eos": True})
            except openai.APIStatusError as exc:  # scaled to zero meanwhile: waking
                assert exc.status_code == 503
                await asyncio.sleep(0.5)

    workers = [asyncio.ensure_future(worker()) for _ in range(12)]
    deadline = time.monotonic() + 180
    while running_replicas() < 2 and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
    assert running_replicas() == 2
    holders = [LiveStream(client, _ids(rng, 16), LONG_CONTEXT - 64) for _ in range(3)]
    stop.set()
    await asyncio.gather(*workers)
    drains = await one_stream_on_each_replica(client, holders, lambda: _ids(rng, 16),
                                              LONG_CONTEXT - 64, DRAIN_STREAM_S)
    assert running_replicas() == 2
    for holder in holders:
        await holder.cancel()
    await until(lambda: running_replicas() == 1, 60, "the autoscaler to stop a replica")
    assert not [d for d in drains if d.done], "a drain stream ended before the stop began"
    await asyncio.gather(*(d.task for d in drains))
    return drains


def test_replicas_scale_1_to_2_and_back_draining_the_removed_replicas_stream(autoscaled):
    drains = asyncio.run(_scale_up_then_down_under_streams(autoscaled))
    for d in drains:  # both replicas had one; the stopped one's ran to the end
        assert d.error is None, d.error
        assert d.finish == "length" and d.tokens == d.completion_tokens == d.max_tokens
    # The stopped replica's actor is gone once its stream has ended.
    wait_for(lambda: len(replica_actors()) == 1, 60, "the stopped replica to exit", 0.5)
    assert running_replicas() == 1
    # ... and neither ingress replica lists it in /metrics any more.
    assert len(_listed_by_each_ingress(autoscaled, 5)) == 1


def test_scaled_to_zero_a_request_gets_retry_after_and_wakes_a_replica(autoscaled):
    url, tokens = autoscaled.url, autoscaled.tokens
    assert _post(autoscaled, "cache", CACHED).status_code == 200  # cached now (if not before)
    wait_for(lambda: running_replicas() == 0, 120, "the last idle replica to stop", 0.5)
    # Scaled to zero, a cached answer is still served (the cold-start 503 comes after a miss).
    hit = httpx.post(url + "/v1/completions", headers=autoscaled.headers("cache"), json=CACHED,
                     timeout=60)
    assert hit.status_code == 200 and hit.headers["x-cache"] == "hit", hit.text
    headers = {"authorization": f"Bearer {tokens['load']}"}
    body = {"model": "tiny", "prompt": "Hello", "max_tokens": 2}
    cold = httpx.post(url + "/v1/completions", headers=headers, json=body, timeout=60)
    assert cold.status_code == 503 and cold.headers["retry-after"] == "7"
    assert cold.headers[INGRESS_HEADER]  # the outermost middleware: on refusals too
    assert cold.json()["error"]["code"] == "engine_cold_start"
    wait_for(lambda: running_replicas() == 1, 180, "the woken replica", 0.5)
    warm = wait_for(lambda: (r := httpx.post(url + "/v1/completions", headers=headers,
                                             json=body, timeout=60)).status_code == 200 and r,
                    60, "a warm answer", 0.5)
    assert warm.json()["usage"]["completion_tokens"] == 2


def test_cormorant_serve_ray_joins_the_cluster_and_serves(autoscaled, ray_cluster, tiny_llama):
    """The CLI on a cluster it joins by address (as a second machine would): deploys, serves
    through the proxy, and on SIGTERM deletes its application."""
    from ray import serve

    serve.delete(APP)
    cmd = [sys.executable, "-m", "cormorant", "--log-level", "warning", "serve", "--ray",
           "--ray-address", ray_cluster.cluster.address, "--ray-app-name", "cli",
           "--model", tiny_llama, "--device", "cpu", "--threads", "1", "--replicas", "1",
           "--num-kv-blocks", "256", "--max-model-len", "512", "--usage-db", ":memory:"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **ENV})
    try:
        wait_http_ready(ray_cluster.url, proc, timeout=240, interval=0.5)
        model = httpx.get(ray_cluster.url + "/v1/models", timeout=30).json()["data"][0]["id"]
        assert model == Path(tiny_llama).name  # --served-model-name's default
        out = _client(ray_cluster.url).completions.create(model=model, prompt=[5, 6],
                                                          max_tokens=3)
        assert out.usage.completion_tokens == 3
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0, proc.stderr.read()[-2000:]
    assert "cli" not in serve.status().applications
