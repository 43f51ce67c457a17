"""Unit tests of hosting.registry: registry files, specs, sizes, sources, aliases, routing."""
from __future__ import annotations

import json
import os
import random
from collections import Counter
from pathlib import Path

import pytest

from cormorant.hosting.registry import (ModelSpec, Registry, RegistryError, RegistrySettings,
                                        load_registry_file, parse_bytes, registry_from_dict,
                                        resolve_source)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "models"
    (r / "llama" / "v1").mkdir(parents=True)
    (r / "llama" / "v1" / "config.json").write_text("{}")
    (r / "tiny.gguf").write_text("weights")
    return r


def spec(name: str = "chat", version: str = "1", **kw) -> ModelSpec:
    return ModelSpec.from_dict({"name": name, "version": version,
                                "source": kw.pop("source", "builtin:smollm2"), **kw})


def registry(*ids: str) -> Registry:
    reg = Registry()
    for model_id in ids:
        name, _, version = model_id.partition("@")
        reg.add(spec(name, version))
    return reg


# --- files -------------------------------------------------------------------------------------

TOML = """
[server]
roots = ["models"]
memory_budget = "6GiB"
idle_ttl_s = 300
drain_timeout_s = 5

[[models]]
name = "chat"
version = "1"
source = "llama/v1"
kind = "generate"
load = "on_demand"
memory = "512MB"
engine = { max_model_len = 2048, enforce_eager = true }
limits = { max_waiting_requests = 8 }

[[models]]
name = "chat"
version = "2"
source = "tiny.gguf"
fallbacks = ["chat@1"]

[[models]]
name = "embedder"
source = "builtin:smollm2"
kind = "embed"

[aliases]
stable = "chat@1"
canary = { "chat@1" = 90, "chat@2" = 10 }
"""


def test_toml_file_parses(root: Path) -> None:
    path = root.parent / "registry.toml"
    path.write_text(TOML)
    reg = load_registry_file(path)
    s = reg.settings
    assert s.roots == (root.resolve(),)
    assert s.memory_budget == 6 * 2**30 and s.idle_ttl_s == 300.0 and s.drain_timeout_s == 5.0
    assert list(reg.specs) == ["chat@1", "chat@2", "embedder@1"]
    c1 = reg.specs["chat@1"]
    assert (c1.kind, c1.load, c1.memory_bytes) == ("generate", "on_demand", 512 * 10**6)
    assert c1.engine == {"max_model_len": 2048, "enforce_eager": True}
    assert c1.limits == {"max_waiting_requests": 8}
    assert reg.specs["chat@2"].fallbacks == ("chat@1",)
    assert reg.specs["embedder@1"].kind == "embed"
    assert reg.aliases == {"stable": {"chat@1": 100.0}, "canary": {"chat@1": 90.0, "chat@2": 10.0}}
    assert resolve_source(c1.source, s.roots) == (root / "llama" / "v1").resolve()


def test_json_file_parses(root: Path) -> None:
    path = root.parent / "registry.json"
    path.write_text(json.dumps({
        "server": {"roots": [str(root)]},
        "models": [{"name": "m", "version": "2", "source": "tiny.gguf"},
                   {"name": "b", "source": "builtin:smollm2", "fallbacks": ["m"]}],
        "aliases": {"prod": {"m@2": 1}}}))
    reg = load_registry_file(path)
    assert list(reg.specs) == ["m@2", "b@1"]
    assert reg.specs["b@1"].source == "builtin:smollm2"
    assert reg.route("prod") == "m@2" and reg.route("b") == "b@1"
    assert reg.settings.memory_budget is None and reg.settings.idle_ttl_s == 0.0


def test_builtin_source_needs_no_root() -> None:
    reg = registry_from_dict({"models": [{"name": "s", "source": "builtin:smollm2"}]})
    assert reg.route("s") == "s@1"
    assert resolve_source("builtin:smollm2", ()) == "builtin:smollm2"
    with pytest.raises(RegistryError, match="unknown builtin"):
        resolve_source("builtin:gpt5", ())


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="cannot read"):
        load_registry_file(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[[models]\nname=")
    with pytest.raises(RegistryError, match="bad.toml"):
        load_registry_file(bad)
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{")
    with pytest.raises(RegistryError, match="bad.json"):
        load_registry_file(bad_json)
    with pytest.raises(RegistryError, match="lists no models"):
        registry_from_dict({"models": []})


@pytest.mark.parametrize("data, words", [
    ({"modles": []}, ["unknown sections", "modles"]),
    ({"server": {"root": []}}, ["[server]", "root"]),
    ({"models": [{"name": "m", "source": "builtin:smollm2", "quant": 4}]}, ["unknown", "quant"]),
    ({"models": [{"name": "m", "source": "builtin:smollm2", "kind": "rerank"}]}, ["kind"]),
    ({"models": [{"name": "m", "source": "builtin:smollm2", "load": "lazy"}]}, ["load"]),
    ({"models": [{"name": "m", "source": "builtin:smollm2", "engine": {"max_len": 1}}]},
     ["unknown settings", "max_len"]),
    ({"models": [{"name": "m", "source": "builtin:smollm2", "limits": {"rps": 1}}]},
     ["unknown settings", "rps"]),
    ({"models": [{"name": "m", "source": "builtin:smollm2", "memory": "lots"}]}, ["size", "lots"]),
    ({"models": [{"name": "m"}]}, ["source"]),
    ({"models": [{"name": "a b", "source": "builtin:smollm2"}]}, ["name"]),
    ({"models": [{"name": "m", "version": "x@y", "source": "builtin:smollm2"}]}, ["version"]),
    ({"models": [{"name": "m", "source": "builtin:smollm2", "fallbacks": ["nope"]}]},
     ["fallback", "nope"]),
    ({"models": [{"name": "m", "source": "builtin:smollm2"}] * 2}, ["already registered"]),
    ({"models": [{"name": "m", "source": "builtin:smollm2"}], "aliases": {"a": "m@9"}},
     ["unknown model", "m@9"]),
])
def test_bad_settings_are_refused_by_name(data: dict, words: list[str]) -> None:
    with pytest.raises(RegistryError) as info:
        registry_from_dict(data)
    for word in words:
        assert word in str(info.value)


def test_missing_source_fails_at_parse(root: Path) -> None:
    data = {"server": {"roots": [str(root)]}, "models": [{"name": "m", "source": "nope.bin"}]}
    with pytest.raises(RegistryError, match="not found"):
        registry_from_dict(data)


def test_parse_bytes() -> None:
    assert parse_bytes("6GiB") == 6 * 2**30
    assert parse_bytes("512MB") == 512 * 10**6
    assert parse_bytes("512MiB") == 512 * 2**20
    assert parse_bytes(" 1.5 kib ") == 1536
    assert parse_bytes("100") == 100 and parse_bytes(4096) == 4096 and parse_bytes(None) is None
    for bad in ("6 GiBs", "-1GB", "GB", "", True, "1e9"):
        with pytest.raises(RegistryError, match="not a size"):
            parse_bytes(bad)


# --- sources -----------------------------------------------------------------------------------

@pytest.mark.parametrize("source", ["/etc/passwd", "\\share\\x", "~/weights", "../models/tiny.gguf",
                                    "llama/../../x", "llama\\v1", "tiny\x00.gguf", "", "."])
def test_resolve_source_refuses_escapes(root: Path, source: str) -> None:
    with pytest.raises(RegistryError):
        resolve_source(source, (root,))


def test_resolve_source_refuses_absolute_path_even_inside_root(root: Path) -> None:
    with pytest.raises(RegistryError, match="relative"):
        resolve_source(str(root / "tiny.gguf"), (root,))


def test_resolve_source_refuses_symlink_out_of_root(root: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "key").write_text("x")
    os.symlink(secret, root / "escape")
    os.symlink(secret / "key", root / "escape_file")
    for source in ("escape", "escape/key", "escape_file"):
        with pytest.raises(RegistryError, match="not found"):
            resolve_source(source, (root,))
    os.symlink(root / "tiny.gguf", root / "inside")  # a link that stays inside is fine
    assert resolve_source("inside", (root,)) == (root / "tiny.gguf").resolve()


def test_resolve_source_accepts_files_and_dirs_under_any_root(root: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    (other / "emb").mkdir(parents=True)
    assert resolve_source("tiny.gguf", (root,)) == (root / "tiny.gguf").resolve()
    assert resolve_source("llama/v1", (root,)) == (root / "llama" / "v1").resolve()
    assert resolve_source("./llama/v1/config.json", (root,)).name == "config.json"
    assert resolve_source("emb", (root, other)) == (other / "emb").resolve()
    with pytest.raises(RegistryError, match="not found"):
        resolve_source("missing.bin", (root, other))
    with pytest.raises(RegistryError, match="not found"):
        resolve_source("tiny.gguf", ())


# --- aliases -----------------------------------------------------------------------------------

def test_alias_forms_and_refusals() -> None:
    models = [{"name": "m", "version": v, "source": "builtin:smollm2"} for v in "12"]
    reg = registry_from_dict({"models": models,
                              "aliases": {"one": "m@1", "split": {"m@1": 3, "m@2": 1.5}}})
    assert reg.aliases["one"] == {"m@1": 100.0}
    assert reg.aliases["split"] == {"m@1": 3.0, "m@2": 1.5}
    with pytest.raises(RegistryError, match="unknown model 'm@3'"):
        reg.set_alias("x", {"m@1": 1, "m@3": 1})
    with pytest.raises(RegistryError, match="add up to zero"):
        reg.set_alias("x", {"m@1": 0, "m@2": 0})
    with pytest.raises(RegistryError, match="at least one target"):
        reg.set_alias("x", {})
    for weight in (-1, "10", True, None, float("nan"), float("inf")):
        with pytest.raises(RegistryError, match="weights"):
            reg.set_alias("x", {"m@1": weight})
    with pytest.raises(RegistryError, match="alias"):
        reg.set_alias("m@1", {"m@2": 1})  # named like a model id
    assert "x" not in reg.aliases and "m@1" not in reg.aliases
    reg.remove_alias("one")
    with pytest.raises(RegistryError, match="unknown alias"):
        reg.remove_alias("one")


def test_alias_and_model_ids_never_collide() -> None:
    reg = Registry()
    reg.add(spec("plain", ""))  # no version: the id is the bare name
    assert reg.specs["plain"].id == "plain"
    with pytest.raises(RegistryError, match="is a model id"):
        reg.set_alias("plain", {"plain": 1})
    reg.set_alias("latest", {"plain": 1})
    with pytest.raises(RegistryError, match="already an alias"):
        reg.add(spec("latest", ""))
    with pytest.raises(RegistryError, match="target of an alias"):
        reg.remove("plain")
    reg.remove_alias("latest")
    assert reg.remove("plain").id == "plain"
    with pytest.raises(RegistryError, match="unknown model"):
        reg.remove("plain")


# --- routing -----------------------------------------------------------------------------------

def test_route_precedence() -> None:
    reg = registry("chat@1", "chat@3", "chat@2", "other@1")
    assert reg.route("chat") == "chat@2"  # bare name: the latest registered, not the highest
    assert reg.route("chat@1") == "chat@1"
    assert reg.route("nothing") is None and reg.candidates("nothing") is None
    reg.set_alias("chat", {"chat@1": 1})  # an alias beats the bare name
    assert reg.route("chat") == "chat@1" and reg.route("chat", user="u") == "chat@1"
    reg.set_alias("other-alias", {"chat@3": 1})
    assert reg.route("other-alias") == "chat@3"
    reg.add(spec("chat", "3"), replace=True)  # re-registering makes it the latest again
    reg.remove_alias("chat")
    assert reg.route("chat") == "chat@3"
    assert reg.is_referenced("chat@3") and not reg.is_referenced("chat@1")


def test_weighted_split_90_10() -> None:
    reg = registry("m@1", "m@2")
    reg.set_alias("m", {"m@1": 90, "m@2": 10})
    random.seed(1234)
    counts = Counter(reg.route("m") for _ in range(10_000))
    assert set(counts) == {"m@1", "m@2"}
    assert abs(counts["m@2"] / 10_000 - 0.10) <= 0.02


def test_sticky_routes() -> None:
    reg = registry("m@1", "m@2")
    reg.set_alias("m", {"m@1": 90, "m@2": 10})
    users = [f"user-{i}" for i in range(2_000)]
    first = {u: reg.route("m", user=u) for u in users}
    for _ in range(3):
        assert {u: reg.route("m", user=u) for u in users} == first
    share = Counter(first.values())["m@2"] / len(users)
    assert abs(share - 0.10) <= 0.04
    reg.set_alias("n", {"m@1": 90, "m@2": 10})  # the hash includes the alias
    assert any(reg.route("n", user=u) != first[u] for u in users)


def test_zero_weight_is_never_chosen() -> None:
    reg = registry("m@1", "m@2", "m@3")
    reg.set_alias("m", {"m@1": 0, "m@2": 1, "m@3": 0})
    assert {reg.route("m") for _ in range(2_000)} == {"m@2"}
    assert {reg.route("m", user=f"u{i}") for i in range(2_000)} == {"m@2"}
    reg.set_alias("m", {"m@1": 1, "m@2": 0, "m@3": 1})
    assert {reg.route("m") for _ in range(2_000)} == {"m@1", "m@3"}


def test_fallbacks_must_name_known_models() -> None:
    base = [{"name": "a", "version": "1", "source": "builtin:smollm2"}]
    ok = registry_from_dict({
        "models": base + [{"name": "b", "source": "builtin:smollm2",
                           "fallbacks": ["a", "a@1", "al"]}],
        "aliases": {"al": "a@1"}})
    assert ok.specs["b@1"].fallbacks == ("a", "a@1", "al")
    for bad in (["a@2"], [""], [3], "a@1"):
        with pytest.raises(RegistryError, match="fallback"):
            registry_from_dict({"models": base + [{"name": "b", "source": "builtin:smollm2",
                                                   "fallbacks": bad}]})


def test_spec_defaults_and_registry_settings() -> None:
    s = spec("m")
    assert (s.id, s.kind, s.dtype, s.device, s.load, s.memory_bytes) == \
        ("m@1", "generate", "auto", "auto", "startup", None)
    assert RegistrySettings().drain_timeout_s == 60.0
    with pytest.raises(RegistryError, match="table"):
        ModelSpec.from_dict(["m"])  # type: ignore[arg-type]
