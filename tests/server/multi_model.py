"""A real multi-model server for the registry tests: SmolLM2 (the embedded GGUF), tiny random
Llama and Qwen3 models and all-MiniLM-L6-v2 in one app, built from a registry whose model
root holds copies of the test models (copies, not symlinks: a link out of the root is
refused), and API keys of two tenants plus an admin key in a key file."""
from __future__ import annotations

import shutil
from pathlib import Path

import httpx

from cormorant.gateway.auth.keys import create_key
from cormorant.gateway.auth.keystore import write_key_file
from cormorant.hosting.loader import load_object
from cormorant.hosting.registry import registry_from_dict
from server_helpers import ServerThread

TINY_ENGINE = {"num_kv_blocks": 512, "max_model_len": 512, "max_num_seqs": 32}


def tiny(name: str, version: str, source: str = "tiny-llama", **extra) -> dict:
    return {"name": name, "version": version, "source": source, "dtype": "float32",
            "device": "cpu", "engine": dict(TINY_ENGINE), **extra}


def make_root(root: Path, tiny_llama: str, tiny_qwen3: str, minilm: str) -> Path:
    for name, src in (("tiny-llama", tiny_llama), ("tiny-qwen3", tiny_qwen3),
                      ("minilm", minilm)):
        shutil.copytree(src, root / name)
    broken = root / "broken"  # a model directory whose config cannot be loaded
    broken.mkdir()
    (broken / "config.json").write_text('{"architectures": ["NoSuchForCausalLM"]}')
    return root


def registry_data(root: Path) -> dict:
    return {
        "server": {"roots": [str(root)], "drain_timeout_s": 30},
        "models": [
            {"name": "smollm2", "version": "1", "source": "builtin:smollm2", "dtype": "float32",
             "device": "cpu", "engine": {"num_kv_blocks": 256, "max_model_len": 1024}},
            tiny("tiny", "1"),
            tiny("tiny", "2", "tiny-qwen3", load="on_demand"),
            {"name": "minilm", "version": "1", "source": "minilm", "kind": "embed",
             "device": "cpu"},
            tiny("swap", "1"), tiny("swap", "2", load="on_demand"),
            tiny("busy", "1", engine={**TINY_ENGINE, "max_num_seqs": 1},
                 limits={"max_waiting_requests": 1}, fallbacks=["tiny@1"]),
        ],
        "aliases": {"chat": "smollm2@1", "canary": {"tiny@1": 90, "tiny@2": 10},
                    "live": "swap@1"},
    }


class Keys:
    def __init__(self, path: Path) -> None:
        records = []
        for attr, tenant, scopes in (("alice", "acme", {"inference"}),
                                     ("alice2", "acme", {"inference"}),
                                     ("bob", "globex", {"inference"}),
                                     ("admin", "ops", {"inference", "admin", "metrics"})):
            record, token = create_key(attr, frozenset(scopes), tenant=tenant)
            records.append(record)
            setattr(self, attr, token)
        write_key_file(path, records)
        self.path = str(path)


def start_multi_server(root: Path, keys: Keys, **config) -> ServerThread:
    registry = registry_from_dict(registry_data(root))
    loaded = {spec.id: load_object(spec, _source(registry, spec))
              for spec in registry.specs.values() if spec.load == "startup"}
    return ServerThread(None, registry=registry, loaded=loaded, loader=load_object,
                        keys_file=keys.path, response_cache=True,
                        semantic_cache_model="minilm@1", **config).start(timeout=300)


def _source(registry, spec):
    from cormorant.hosting.registry import resolve_source

    return resolve_source(spec.source, registry.settings.roots)


def admin(server: ServerThread, keys: Keys, method: str, path: str, body: dict | None = None,
          timeout: float = 300) -> httpx.Response:
    return httpx.request(method, server.url + path, json=body, timeout=timeout,
                         headers={"authorization": f"Bearer {keys.admin}"})


def status(server: ServerThread, keys: Keys) -> dict:
    response = admin(server, keys, "GET", "/admin/models")
    assert response.status_code == 200, response.text
    return response.json()


def loaded(server: ServerThread, keys: Keys) -> set[str]:
    return {m["id"] for m in status(server, keys)["models"] if m["loaded"]}
