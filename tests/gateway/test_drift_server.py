"""Drift monitoring end to end: a real server on a tiny model, driven by the official openai
client. The report (GET /admin/drift) and the `cormorant:drift_*` gauges are visible over
HTTP, quiet while traffic is steady, and they move after a shift of prompt length and script;
a canary split is compared version against version in the same report."""
from __future__ import annotations

import asyncio
import json
import re
import shutil
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "server"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from server_helpers import ServerThread, running_server, tiny_engine_fixture  # noqa: E402

KEY = "sk-drift-test-0123456789abcdef0123456789"
AUTH = {"authorization": f"Bearer {KEY}"}
DRIFT = {"drift_window": 40, "drift_reference_size": 40, "drift_min_requests": 20}

engine = tiny_engine_fixture("engine")


@pytest.fixture(scope="module")
def minilm():
    from cormorant.frontend.embedder import Embedder
    from models.test_bert import minilm_dir

    encoder = Embedder.from_path(minilm_dir(), name="minilm", device="cpu")
    yield encoder
    encoder.shutdown()


def latin(i: int) -> str:
    return f"Tell me about the quick brown fox number {i}."


def cyrillic(i: int) -> str:
    return (f"Расскажи мне подробно о быстрой коричневой лисе номер {i}, "
            "пожалуйста. ") * 3


async def _send(server: ServerThread, prompts: list[str], concurrency: int = 8,
                **extra) -> list:
    client = server.async_client(api_key=KEY)
    gate = asyncio.Semaphore(concurrency)

    async def one(prompt: str):
        async with gate:
            return await client.chat.completions.create(
                model=server.model, messages=[{"role": "user", "content": prompt}],
                max_tokens=4, temperature=0, **extra)

    try:
        return await asyncio.gather(*(one(p) for p in prompts))
    finally:
        await client.close()


def _gauges(server: ServerThread, name: str) -> dict[tuple, float]:
    text = httpx.get(server.url + "/metrics", headers=AUTH).text
    return {tuple(sorted(s.labels.items())): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples if s.name == name}


def _alarms(server: ServerThread) -> dict[str, float]:
    found: dict[str, float] = {}
    for labels, value in _gauges(server, "cormorant:drift_alarm").items():
        feature = dict(labels)["feature"]
        found[feature] = max(found.get(feature, 0.0), value)
    return found


def _report(server: ServerThread, embedded: int) -> dict:
    """The report once `embedded` prompts have been through the encoder (background tasks)."""
    deadline = time.monotonic() + 30
    while True:
        (model,) = httpx.get(server.url + "/admin/drift", headers=AUTH).json()["models"]
        if model["embeddings"]["num_embedded"] >= embedded or time.monotonic() > deadline:
            return model
        time.sleep(0.05)


def test_drift_report_and_gauges_move_after_a_shift(engine, minilm):
    with running_server(engine, encoders=[minilm], api_key=KEY, drift_embedding_model="minilm",
                        **DRIFT) as server:
        assert httpx.get(server.url + "/admin/drift").status_code == 401
        asyncio.run(_send(server, [latin(i) for i in range(40)]))
        model = _report(server, 40)
        assert model["embeddings"] == {"reference": 40, "current": 40, "num_embedded": 40}
        assert model["reference"] == {"source": "first_requests", "num_rows": 40}
        assert model["num_current"] == 40 and model["drifting"] == []
        assert model["current"]["prompt_script"] == {"latin": 1.0}
        assert {"prompt_tokens", "output_tokens", "finish_reason", "prompt_script",
                "prompt_charclass", "prompt_embedding"} <= set(model["features"])
        alarms = _alarms(server)
        assert alarms and not any(alarms.values())  # scored, and quiet
        # The shift: long Cyrillic prompts. 30 of them in a 40-request window.
        asyncio.run(_send(server, [cyrillic(i) for i in range(30)]))
        model = _report(server, 70)
        assert {"prompt_tokens", "prompt_script", "prompt_charclass",
                "prompt_embedding"} <= set(model["drifting"])
        assert "output_tokens" not in model["drifting"]
        assert model["current"]["prompt_script"]["cyrillic"] == 0.75
        alarms = _alarms(server)
        assert alarms["prompt_tokens"] == alarms["prompt_script"] == 1.0
        assert alarms["prompt_embedding"] == 1.0
        # No prompt text anywhere in the report.
        assert "лис" not in httpx.get(server.url + "/admin/drift", headers=AUTH).text
        _deploy_files_query_only_exported_drift_metrics(server)


def _deploy_files_query_only_exported_drift_metrics(server: ServerThread) -> None:
    """The Grafana panels and the alert rules in deploy/ ask only for drift series this server
    exports, with labels it sets."""
    root = Path(__file__).resolve().parents[2] / "deploy"
    dashboard = json.loads((root / "grafana" / "cormorant-dashboard.json").read_text())
    rules = yaml.safe_load((root / "prometheus" / "cormorant-drift-rules.yml").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", ())
             if "drift" in t["expr"]]
    alerts = [r for g in rules["groups"] for r in g["rules"]]
    assert len(exprs) >= 4 and {a["alert"] for a in alerts} >= {"CormorantInputDrift",
                                                                "CormorantCanaryDiffers"}
    text = httpx.get(server.url + "/metrics", headers=AUTH).text
    exported = {f.name: {k for s in f.samples for k in s.labels}
                for f in text_string_to_metric_families(text) if "drift" in f.name}
    for expr in exprs + [a["expr"] for a in alerts]:
        for name in re.findall(r"cormorant:drift_[a-z_]+", expr):
            assert name in exported, name
            for label in re.findall(r"by \(([a-z_, ]+)\)", expr):
                wanted = {x.strip() for x in label.split(",")}
                assert not exported[name] or wanted <= exported[name], (name, wanted)


def _mean_logprob(server: ServerThread) -> float:
    (model,) = httpx.get(server.url + "/admin/drift", headers=AUTH).json()["models"]
    return model["current"].get("mean_logprob_mean")


def test_mean_logprob_comes_from_the_engine_and_stays_out_of_responses(engine):
    """With drift_logprobs the engine returns the chosen tokens' logprobs for every request;
    the responses carry logprobs only where the request asked for them, and the values are
    the engine's own (the same as a request that asks)."""
    with running_server(engine, api_key=KEY, drift_logprobs=True, **DRIFT) as server:
        plain = asyncio.run(_send(server, [latin(i) for i in range(20)]))
        assert all(c.choices[0].logprobs is None for c in plain)
        silent = _mean_logprob(server)
        asked = asyncio.run(_send(server, [latin(i) for i in range(20)], logprobs=True))
        values = [t.logprob for c in asked for t in c.choices[0].logprobs.content]
        per_request = [sum(t.logprob for t in c.choices[0].logprobs.content)
                       / len(c.choices[0].logprobs.content) for c in asked]
        assert silent < 0 and len(values) == 80
        assert silent == pytest.approx(sum(per_request) / 20, abs=1e-3)  # same prompts
        text = httpx.post(server.url + "/v1/completions", headers=AUTH, json={
            "model": server.model, "prompt": "hello", "max_tokens": 3}).json()
        assert text["choices"][0]["logprobs"] is None
    with running_server(engine, api_key=KEY, **DRIFT) as server:  # off: only those who ask
        asyncio.run(_send(server, [latin(i) for i in range(5)]))
        assert _mean_logprob(server) is None


def test_drift_off_is_a_404(engine):
    with running_server(engine, api_key=KEY, drift=False) as server:
        response = httpx.get(server.url + "/admin/drift", headers=AUTH)
        assert response.status_code == 404
        assert "drift" not in httpx.get(server.url + "/metrics", headers=AUTH).text


def test_canary_split_is_compared_with_its_baseline(tmp_path, tiny_llama, tiny_qwen3):
    """An alias splitting traffic between two versions: the report and
    the gauges compare the canary's current window with the baseline's; the prompts, routed at
    random, look alike on both sides, the answers of two different models do not."""
    from cormorant.hosting.loader import load_object
    from cormorant.hosting.registry import registry_from_dict, resolve_source

    for name, src in (("llama", tiny_llama), ("qwen", tiny_qwen3)):
        shutil.copytree(src, tmp_path / name)
    engine = {"num_kv_blocks": 256, "max_model_len": 512, "max_num_seqs": 16}
    registry = registry_from_dict({
        "server": {"roots": [str(tmp_path)]},
        "models": [{"name": "tiny", "version": v, "source": src, "dtype": "float32",
                    "device": "cpu", "engine": engine} for v, src in (("1", "llama"),
                                                                      ("2", "qwen"))],
        "aliases": {"tiny-prod": {"tiny@1": 50, "tiny@2": 50}}})
    loaded = {spec.id: load_object(spec, resolve_source(spec.source, registry.settings.roots))
              for spec in registry.specs.values()}
    server = ServerThread(None, registry=registry, loaded=loaded, loader=load_object,
                          api_key=KEY, drift_logprobs=True, drift_window=40,
                          drift_reference_size=40, drift_min_requests=12).start()
    try:
        client = server.client(api_key=KEY)
        for i in range(60):
            client.chat.completions.create(
                model="tiny-prod", user=f"user-{i}", max_tokens=6, temperature=0,
                messages=[{"role": "user", "content": latin(i % 7)}])
        report = httpx.get(server.url + "/admin/drift", headers=AUTH).json()
        (pair,) = report["canaries"]
        assert pair["alias"] == "tiny-prod"
        assert pair["baseline"] == ["tiny", "1"] and pair["canary"] == ["tiny", "2"]
        assert "prompt_script" in pair["features"] and "prompt_tokens" not in pair["differing"]
        assert "mean_logprob" in pair["differing"]  # two different models
        canary = _gauges(server, "cormorant:drift_canary_score")
        assert {dict(k)["alias"] for k in canary} == {"tiny-prod"}
    finally:
        server.stop()
        server.app.state.cormorant.pool.shutdown_now()
