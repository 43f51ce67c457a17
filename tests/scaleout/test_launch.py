"""`cormorant serve --ray`: its flags become ScaleoutOptions, and what Ray cannot serve yet
(a registry that scales to zero, a registry file that does not parse) is refused before any
Ray process starts."""
from __future__ import annotations

import subprocess
import sys

import pytest

from cormorant.cli import build_parser
from cormorant.scaleout.launch import launch_error, options_from


def test_the_scale_out_flags_become_the_options():
    args = build_parser().parse_args([
        "serve", "--ray", "--model", "m", "--device", "cuda", "--min-replicas", "0",
        "--max-replicas", "4", "--target-ongoing-requests", "3", "--cold-start-s", "45",
        "--ingress-replicas", "2"])
    options = options_from(args)
    assert args.ray and options.autoscaling
    assert (options.min_replicas, options.max_replicas) == (0, 4)
    assert options.num_gpus_per_replica == 1.0  # one replica per GPU on cuda
    assert (options.target_ongoing_requests, options.cold_start_s) == (3.0, 45)
    assert options.num_ingress_replicas == 2
    cpu = options_from(build_parser().parse_args(["serve", "--ray", "--device", "cpu",
                                                  "--replicas", "3"]))
    assert (cpu.num_gpus_per_replica, cpu.num_replicas, cpu.autoscaling) == (0.0, 3, False)


def _registry(tmp_path, kind: str, extra: str = "") -> str:
    (tmp_path / "m").mkdir(exist_ok=True)
    path = tmp_path / f"models-{kind}{len(extra)}.toml"
    path.write_text(f'[server]\nroots = ["{tmp_path}"]\n[[models]]\nname = "m"\n'
                    f'source = "m"\nkind = "{kind}"\n{extra}')
    return str(path)


def test_a_registry_scaling_to_zero_is_refused_before_ray_starts(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "cormorant", "serve", "--ray", "--models",
                           _registry(tmp_path, "generate"), "--min-replicas", "0"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "scale to zero (--min-replicas 0) serves one --model" in proc.stderr
    assert "Started a local Ray instance" not in proc.stderr


def test_what_ray_cannot_serve_is_named(tmp_path):
    def error(*argv: str) -> str | None:
        return launch_error(build_parser().parse_args(["serve", "--ray", *argv]))

    encoders = _registry(tmp_path, "embed")
    assert error("--models", encoders) is None  # generators and encoders are served
    assert error("--models", encoders, "--min-replicas", "1") is None
    assert "--models: cannot read" in error("--models", str(tmp_path / "missing.toml"))
    assert error("--embedding-model", "e") is None  # a deployment beside the engines
    zero = _registry(tmp_path, "generate", "ray = { min_replicas = 0, max_replicas = 2 }\n")
    assert "min_replicas = 0 in ray, m@1" in error("--models", zero)


def test_serve_run_builds_a_registry_application(tmp_path):
    """`serve run cormorant.scaleout.app:build_app models=FILE`: one ingress over the
    registry (its versions are deployed when it starts); per-model settings are the file's."""
    from cormorant.scaleout.app import INGRESS_DEPLOYMENT, build_app

    registry = _registry(tmp_path, "generate")
    app = build_app({"models": registry, "replicas": "1"})
    deployment = app._bound_deployment  # what `serve run` deploys
    assert deployment.name == INGRESS_DEPLOYMENT
    assert deployment.init_args[0] == registry  # the file, read again by each ingress
    with pytest.raises(ValueError, match="each model's settings"):
        build_app({"models": registry, "device": "cpu"})
    with pytest.raises(ValueError, match="model=PATH or models=FILE"):
        build_app({"models": registry, "model": "m"})


def test_embedding_models_become_encoder_deployments_beside_the_engines(tmp_path):
    from cormorant.scaleout.launch import _application

    args = build_parser().parse_args([
        "serve", "--ray", "--model", str(tmp_path), "--device", "cpu",
        "--embedding-model", f"{tmp_path}/minilm", "--embedding-model", f"{tmp_path}/b=sent"])
    app, _ = _application(args)
    encoders = app._bound_deployment.init_args[6]  # Ingress(..., encoders)
    assert [(e[0]._bound_deployment.name, e[1], e[2]) for e in encoders] == [
        ("cormorant-encoder-minilm", f"{tmp_path}/minilm", "minilm"),
        ("cormorant-encoder-sent", f"{tmp_path}/b", "sent")]


def test_a_registry_entry_sizes_its_own_replicas(tmp_path):
    from cormorant.hosting.registry import RegistryError, registry_from_dict
    from cormorant.scaleout.options import ScaleoutOptions, for_model

    (tmp_path / "m").mkdir()

    def spec(ray: dict):
        data = {"server": {"roots": [str(tmp_path)]},
                "models": [{"name": "m", "source": "m", "ray": ray}]}
        return registry_from_dict(data).specs["m@1"]

    own = for_model(ScaleoutOptions(num_replicas=1, num_gpus_per_replica=1.0),
                    spec({"replicas": 3, "gpus_per_replica": 0.5}).ray)
    assert (own.num_replicas, own.num_gpus_per_replica) == (3, 0.5)
    assert for_model(ScaleoutOptions(), spec({}).ray) == ScaleoutOptions()
    with pytest.raises(RegistryError, match="unknown settings \\['replica'\\] in ray"):
        spec({"replica": 2})
    with pytest.raises(RegistryError, match="numbers >= 0"):
        spec({"replicas": "2"})


def test_serve_run_shares_state_through_redis_postgresql_and_a_files_dir(tmp_path):
    """`serve run ...:build_app`'s keys for what a RayService's ingress replicas share
    reach each ingress's ServerConfig; the response cache is on unless turned off."""
    from cormorant.scaleout.app import build_app

    def server_fields(**args: str) -> dict:
        app = build_app({"model": str(tmp_path), **args})
        return app._bound_deployment.init_args[3]  # Ingress(..., server_config fields, ...)

    fields = server_fields(
        redis="redis://r:6379/0", response_cache_redis="redis://r:6379/1",
        response_cache_ttl_s="30", usage_db="postgresql://cormorant@pg/usage",
        files_dir="/shared/files", default_rpm="60", default_tpm="", keys_file="/k.json")
    assert {k: fields[k] for k in ("redis_url", "response_cache", "response_cache_redis_url",
                                   "response_cache_ttl_s", "usage_db", "files_dir",
                                   "default_rpm", "default_tpm", "keys_file")} == {
        "redis_url": "redis://r:6379/0", "response_cache": True,
        "response_cache_redis_url": "redis://r:6379/1", "response_cache_ttl_s": 30.0,
        "usage_db": "postgresql://cormorant@pg/usage", "files_dir": "/shared/files",
        "default_rpm": 60, "default_tpm": None, "keys_file": "/k.json"}
    plain = server_fields()
    assert plain["response_cache"] and plain["response_cache_redis_url"] is None
    assert server_fields(response_cache="off")["response_cache"] is False
    with pytest.raises(ValueError, match="response_cache must be on or off"):
        server_fields(response_cache="yes")
    with pytest.raises(ValueError, match="needs the response cache"):
        server_fields(response_cache="off", response_cache_redis="redis://r/1")
    registry = build_app({"models": _registry(tmp_path, "generate"),
                          "response_cache_redis": "redis://r:6379/1"})
    assert registry._bound_deployment.init_args[1]["response_cache_redis_url"] == \
        "redis://r:6379/1"  # RegistryIngress(file, server_config fields, ...)


def test_drain_grace_s_is_how_long_stopping_replicas_and_ingresses_serve_their_streams(
        tmp_path):
    """`serve --ray --drain-grace-s S` (the server's SIGTERM drain) sets how long a stopping
    engine replica and ingress keep streaming; unset, Ray's 120 s, and plain `serve` 30 s."""
    from cormorant.scaleout.app import build_app
    from cormorant.scaleout.launch import _application
    from cormorant.server.launch import server_config

    def drains(app) -> tuple[float, float]:  # (the ingress's, its engine deployment's)
        ingress = app._bound_deployment
        engine = ingress.init_args[0]._bound_deployment
        return (ingress._deployment_config.graceful_shutdown_timeout_s,
                engine._deployment_config.graceful_shutdown_timeout_s)

    base = ["serve", "--ray", "--model", str(tmp_path), "--device", "cpu"]
    args = build_parser().parse_args([*base, "--drain-grace-s", "45"])
    assert options_from(args).graceful_shutdown_timeout_s == 45.0
    assert drains(_application(args)[0]) == (45.0, 45.0)
    unset = build_parser().parse_args(base)
    assert options_from(unset).graceful_shutdown_timeout_s == 120.0
    assert drains(_application(unset)[0]) == (120.0, 120.0)
    assert server_config(build_parser().parse_args(["serve"]), "").drain_grace_s == 30.0
    assert server_config(args, "").drain_grace_s == 45.0
    assert drains(build_app({"model": str(tmp_path), "drain_grace_s": "5"})) == (5.0, 5.0)
    registry = build_app({"models": _registry(tmp_path, "generate"), "drain_grace_s": "7"})
    assert registry._bound_deployment._deployment_config.graceful_shutdown_timeout_s == 7.0
