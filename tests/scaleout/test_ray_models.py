"""Several models through Ray Serve: a registry whose versions each run on replicas of their own,
behind one ingress, driven by the official openai client through Serve's HTTP proxy.

One single-node Ray cluster for the module; `cormorant serve --ray --models FILE` joins it by
address with a registry of two tiny models of different architectures (a Llama and a Qwen2)
and a tiny BERT classifier at start-up, a second Llama version on demand and an alias.
Each model answers with its own greedy output (transformers'), the classifier answers
/v1/classify as transformers does, a model's requests reach only its own replicas, a canary
split and an alias swap move traffic between versions (the swapped-out version's replicas are
deleted), and an unknown model is a 404 naming the served ones.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ray_cluster import ENV, local_cluster  # noqa: E402
from support import wait_for, wait_http_ready  # noqa: E402
from models.test_bert import LABELS, save_tiny_bert_classifier, transformers_probs  # noqa: E402
from tiny import load_reference, save_model  # noqa: E402

APP = "cormorant"
PROMPT = [5, 17, 42, 99, 7, 250, 31, 8, 64, 120]
ENGINE = {"threads": 1, "seed": 0, "max_model_len": 512, "max_num_seqs": 4,
          "num_kv_blocks": 256}


@pytest.fixture(scope="module")
def ray_cluster():
    """One head node (6 logical CPUs: an ingress, four engine replicas, an encoder)."""
    with local_cluster((6,)) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def models(tiny_llama, tiny_qwen2, tmp_path_factory):
    """model id -> its directory; all under pytest's base temp, the registry's one root."""
    second = save_model(tmp_path_factory.mktemp("tiny-llama-v2"), "llama", seed=1)
    encoder = save_tiny_bert_classifier(tmp_path_factory.mktemp("tiny-bert-cls"))
    return {"tiny@1": Path(tiny_llama), "tiny@2": second, "other@1": Path(tiny_qwen2),
            "sentiment@1": encoder}


@pytest.fixture(scope="module")
def served(ray_cluster, models, tmp_path_factory):
    """`cormorant serve --ray --models FILE`, joining the cluster by address; on SIGTERM it
    must delete its application and every model version's application."""
    from ray import serve

    root = tmp_path_factory.getbasetemp()
    engine = ", ".join(f"{k} = {v}" for k, v in ENGINE.items())
    entries = [("tiny", "1", "startup"), ("tiny", "2", "on_demand"), ("other", "1", "startup")]
    toml = [f'[server]\nroots = ["{root}"]\ndrain_timeout_s = 5\n']
    for name, version, load in entries:
        source = models[f"{name}@{version}"].relative_to(root)
        replicas = 2 if (name, version) == ("tiny", "1") else 1  # its own; the flag's 1
        toml.append(f'[[models]]\nname = "{name}"\nversion = "{version}"\nsource = "{source}"\n'
                    f'device = "cpu"\nload = "{load}"\nengine = {{ {engine} }}\n'
                    f'ray = {{ replicas = {replicas} }}\n')
    source = models["sentiment@1"].relative_to(root)
    toml.append(f'[[models]]\nname = "sentiment"\nsource = "{source}"\nkind = "embed"\n'
                'device = "cpu"\n')
    toml.append('[aliases]\nchat = "tiny@1"\n')
    registry = tmp_path_factory.mktemp("registry") / "models.toml"
    registry.write_text("\n".join(toml))
    cmd = [sys.executable, "-m", "cormorant", "--log-level", "warning", "serve", "--ray",
           "--ray-address", ray_cluster.cluster.address, "--ray-app-name", APP,
           "--models", str(registry), "--replicas", "1", "--usage-db", ":memory:"]
    started = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **ENV})
    try:
        wait_http_ready(ray_cluster.url, proc, timeout=300, interval=0.5)
        print(f"registry application ready in {time.monotonic() - started:.1f}s")
        yield ray_cluster.url
    finally:
        stopping = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0, proc.stderr.read()[-3000:]
        print(f"stopped in {time.monotonic() - stopping:.1f}s")
    assert not [a for a in serve.status().applications if a.startswith(APP)]


def _client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)


def _greedy(path: Path, prompt: list[int], n: int = 8) -> str:
    from transformers import AutoTokenizer

    with torch.no_grad():
        ids = load_reference(path).generate(torch.tensor([prompt]), max_new_tokens=n,
                                            do_sample=False)[0, len(prompt):].tolist()
    return AutoTokenizer.from_pretrained(str(path)).decode(ids, skip_special_tokens=True)


def _complete(url: str, model: str, user: str | None = None, prompt: list[int] = PROMPT):
    """A greedy completion (the CLI's response cache answers a repeated one)."""
    extra = {"user": user} if user else {}
    return _client(url).completions.create(model=model, prompt=prompt, max_tokens=8,
                                           temperature=0, extra_body={"ignore_eos": True},
                                           **extra)


def _model_apps() -> dict[str, str]:
    """model id -> the name of the Serve application that runs it."""
    from ray import serve

    return {name.split(".", 1)[1].rsplit(".", 1)[0]: name
            for name in serve.status().applications if name.startswith(APP + ".")}


def _queries(url: str) -> dict[tuple[str, str], float]:
    """(model id, replica) -> prompt tokens that replica admitted, from the ingress /metrics."""
    values = {}
    for line in httpx.get(url + "/metrics", timeout=60).text.splitlines():
        if line.startswith("cormorant_replica_prefix_cache_queries_total{"):
            labels, value = line.rsplit(" ", 1)
            fields = dict(part.split("=", 1) for part in labels.split("{", 1)[1][:-1].split(","))
            label = {k: v.strip('"') for k, v in fields.items()}
            model = f"{label['model_name']}@{label['model_version']}"
            values[(model, label["replica"])] = float(value)
    return values


def test_each_model_answers_with_its_own_greedy_output(served, models):
    assert set(_model_apps()) == {"tiny@1", "other@1", "sentiment@1"}  # tiny@2: on demand
    for name, model_id in (("tiny@1", "tiny@1"), ("other", "other@1"), ("chat", "tiny@1")):
        out = _complete(served, name)
        assert out.model == model_id
        assert out.choices[0].text == _greedy(models[model_id], PROMPT)
        assert out.usage.completion_tokens == 8


def test_requests_for_a_model_reach_only_its_replicas(served):
    from ray import serve

    apps = serve.status().applications
    running = {model: apps[name].deployments["cormorant-engine"].replica_states.get("RUNNING")
               for model, name in _model_apps().items() if model != "sentiment@1"}
    assert running == {"tiny@1": 2, "other@1": 1}  # tiny@1's registry entry asks for two
    for i in range(4):  # unrelated prompts spread over tiny@1's two replicas
        _complete(served, "tiny@1", prompt=[*PROMPT, 200 + i])
    _complete(served, "other")
    before = _queries(served)
    owners = {model for model, _ in before}
    assert owners == {"tiny@1", "other@1"}, before
    replicas = {model: {r for m, r in before if m == model} for model in owners}
    assert len(replicas["tiny@1"]) == 2 and len(replicas["other@1"]) == 1, before
    assert not replicas["tiny@1"] & replicas["other@1"]
    for i in range(3):  # new prompts: not from the response cache
        _complete(served, "other", prompt=[*PROMPT, 300 + i])
    after = _queries(served)
    for (model, replica), value in after.items():
        grew = value - before.get((model, replica), 0.0)
        assert grew > 0 if model == "other@1" else grew == 0, (model, replica, grew)


def test_an_encoder_of_the_registry_classifies_on_its_own_replicas(served, models):
    from cormorant.frontend.embedder import load_encoder_tokenizer

    path = str(models["sentiment@1"])
    texts = ["the movie was great", "terrible service, never again", "it was fine"]
    response = httpx.post(served + "/v1/classify", timeout=60,
                          json={"model": "sentiment", "input": texts})
    assert response.status_code == 200, response.text
    tokenizer = load_encoder_tokenizer(path)
    expected = transformers_probs(path, [tokenizer.encode(t, add_special_tokens=True)
                                         for t in texts])
    for item, probs in zip(response.json()["data"], expected, strict=True):
        assert np.allclose(item["probs"], probs, atol=1e-5)
        assert item["label"] == LABELS[int(np.argmax(probs))]
    vectors = _client(served).embeddings.create(model="sentiment", input=texts).data
    assert [len(v.embedding) for v in vectors] == [32] * 3  # the tiny BERT's hidden size
    assert np.allclose([np.linalg.norm(v.embedding) for v in vectors], 1.0, atol=1e-5)
    with pytest.raises(openai.BadRequestError):  # a generator cannot embed
        _client(served).embeddings.create(model="other", input=texts)


def test_a_canary_split_and_an_alias_swap_move_traffic_between_versions(served, models):
    expected = {m: _greedy(models[m], PROMPT) for m in ("tiny@1", "tiny@2")}
    assert expected["tiny@1"] != expected["tiny@2"]
    started = time.monotonic()
    response = httpx.put(served + "/admin/aliases/chat", timeout=600,
                         json={"targets": {"tiny@1": 50, "tiny@2": 50}})
    assert response.status_code == 200, response.text
    print(f"tiny@2 deployed on demand in {time.monotonic() - started:.1f}s")
    assert set(_model_apps()) == {"tiny@1", "tiny@2", "other@1", "sentiment@1"}
    seen = set()
    for user in (f"user-{i}" for i in range(12)):  # a split sticky per user
        out = _complete(served, "chat", user)
        assert out.choices[0].text == expected[out.model]
        seen.add(out.model)
        assert _complete(served, "chat", user).model == out.model
    assert seen == {"tiny@1", "tiny@2"}
    cli = subprocess.run([sys.executable, "-m", "cormorant", "models", "--url", served,
                          "alias", "chat", "tiny@2"], capture_output=True, text=True,
                         timeout=120, env={**os.environ, **ENV})
    assert cli.returncode == 0, cli.stderr
    assert all(_complete(served, "chat", f"user-{i}").model == "tiny@2" for i in range(4))
    # Nothing routes to tiny@1 any more: it drains and its replicas are deleted.
    wait_for(lambda: "tiny@1" not in _model_apps(), 60, "tiny@1's application to go", 0.5)
    assert set(_model_apps()) == {"tiny@2", "other@1", "sentiment@1"}
    # Asked for again, it loads on demand: a new application, the same answer.
    out = _complete(served, "tiny@1", prompt=[*PROMPT, 7])
    assert out.choices[0].text == _greedy(models["tiny@1"], [*PROMPT, 7])
    assert set(_model_apps()) == {"tiny@1", "tiny@2", "other@1", "sentiment@1"}


def test_an_unknown_model_is_a_404_naming_the_served_ones(served, models, tmp_path_factory):
    with pytest.raises(openai.NotFoundError) as info:
        _complete(served, "nonexistent")
    message = str(info.value)
    assert "nonexistent" in message
    assert "served: chat, other, sentiment, tiny" in message
    # A version registered at run time may size its replicas; a wrong key is a 400.
    source = str(models["tiny@1"].relative_to(tmp_path_factory.getbasetemp()))
    body = {"name": "extra", "source": source, "load": False}
    bad = httpx.post(served + "/admin/models", json={**body, "ray": {"replica": 2}}, timeout=60)
    assert bad.status_code == 400 and "unknown settings ['replica'] in ray" in bad.text
    good = httpx.post(served + "/admin/models", json={**body, "ray": {"replicas": 2}}, timeout=60)
    assert good.status_code == 201, good.text
    assert _complete(served, "other").usage.completion_tokens == 8  # still serving
