"""The KubeRay RayService (deploy/kubernetes/ray) renders with kustomize, its pod templates
validate against the Kubernetes schemas, and its Serve application is one that
cormorant.scaleout.app.build_app accepts (every arg known, the import path real)."""
from __future__ import annotations

import copy
import importlib

import kubernetes_validate
import pytest
import yaml

from test_manifests import K8S_VERSION, ROOT, subprocess


def _render() -> dict:
    out = subprocess.run(["kubectl", "kustomize", str(ROOT / "deploy/kubernetes/ray")],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    docs = [doc for doc in yaml.safe_load_all(out) if doc]
    assert [d["kind"] for d in docs] == ["RayService"]
    return docs[0]


@pytest.fixture(scope="module")
def rayservice() -> dict:
    return _render()


def _pods(service: dict) -> list[dict]:
    cluster = service["spec"]["rayClusterConfig"]
    templates = [cluster["headGroupSpec"]["template"]] + [
        group["template"] for group in cluster["workerGroupSpecs"]]
    return [{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"pod-{i}"},
             "spec": copy.deepcopy(t["spec"])} for i, t in enumerate(templates)]


def test_the_pod_templates_validate_against_the_kubernetes_schemas(rayservice):
    pods = _pods(rayservice)
    assert len(pods) == 2
    for pod in pods:
        kubernetes_validate.validate(pod, K8S_VERSION, strict=True)
        assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    broken = copy.deepcopy(pods[1])
    broken["spec"]["containers"][0]["resources"]["limits"] = "64Gi"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_the_serve_application_is_one_build_app_accepts(rayservice):
    from cormorant.scaleout.app import ENGINE_DEPLOYMENT, build_app

    serve_config = yaml.safe_load(rayservice["spec"]["serveConfigV2"])
    (app,) = serve_config["applications"]
    module, _, name = app["import_path"].partition(":")
    assert getattr(importlib.import_module(module), name) is build_app
    args = app["args"]
    assert all(isinstance(v, str) for v in args.values())  # what Serve hands a builder
    bound = build_app(args)  # an unknown key or a bad value raises here
    engine = bound._bound_deployment.init_args[0]._bound_deployment
    assert engine.name == ENGINE_DEPLOYMENT
    assert engine.ray_actor_options["num_gpus"] == float(args["num_gpus"])
    auto = engine._deployment_config.autoscaling_config
    assert (auto.min_replicas, auto.max_replicas) == (int(args["min_replicas"]),
                                                      int(args["max_replicas"]))
    # Every engine replica needs a GPU worker: the worker groups can reach max_replicas.
    workers = rayservice["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    assert sum(g["maxReplicas"] for g in workers) >= auto.max_replicas
    for group in workers:
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert limits["nvidia.com/gpu"] == 1
    with pytest.raises(ValueError, match="unknown arguments"):
        build_app({**args, "replica": "2"})
