"""The Kubernetes manifests render with kustomize, validate against the Kubernetes schemas, and
agree with the server they deploy (flags, probe paths, port) and with the images (user, port)."""
from __future__ import annotations

import argparse
import re
import inspect
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from cormorant.server.launch import add_serve_args

ROOT = Path(__file__).resolve().parents[2]
OVERLAYS = ("cpu", "gpu")
K8S_VERSION = "1.33.0"
DOCKERFILES = ("Dockerfile", "Dockerfile.cuda")


def render(overlay: str) -> list[dict]:
    out = subprocess.run(["kubectl", "kustomize", str(ROOT / "deploy/kubernetes/overlays" / overlay)],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request) -> dict[str, dict]:
    docs = render(request.param)
    return {doc["kind"]: doc for doc in docs}


def serve_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cormorant serve", exit_on_error=False)
    add_serve_args(parser)
    return parser


def entrypoint_args(dockerfile: str) -> list[str]:
    text = (ROOT / "deploy/docker" / dockerfile).read_text()
    match = re.search(r'^ENTRYPOINT (\[.*\])$', text, re.M)
    assert match, f"{dockerfile} has no exec-form ENTRYPOINT"
    argv = yaml.safe_load(match.group(1))
    assert argv[:2] == ["cormorant", "serve"], argv
    return argv[2:]


def test_every_resource_validates_against_the_kubernetes_schemas(rendered):
    assert set(rendered) == {"Deployment", "Service", "ServiceMonitor",
                             "HorizontalPodAutoscaler", "PodDisruptionBudget"}
    for kind, doc in rendered.items():
        if kind == "ServiceMonitor":  # a CRD: no schema in the Kubernetes set
            continue
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_a_broken_manifest_is_caught_by_the_validation():
    doc = next(d for d in render("cpu") if d["kind"] == "Deployment")
    doc["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"]["port"] = [8000]
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_the_container_runs_what_the_server_accepts(rendered):
    container = rendered["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    image = container["image"]
    dockerfile = "Dockerfile.cuda" if image.endswith(":cuda") else "Dockerfile"
    argv = entrypoint_args(dockerfile) + container["args"]
    args = serve_parser().parse_args(argv)  # an unknown flag or bad value raises here
    assert args.keys_file and args.host == "0.0.0.0"
    # The port the server binds is the one the probes, the Service and the image name.
    assert container["ports"][0]["containerPort"] == args.port
    assert f"EXPOSE {args.port}" in (ROOT / "deploy/docker" / dockerfile).read_text()
    mounted = {m["mountPath"] for m in container["volumeMounts"]}
    assert str(Path(args.keys_file).parent) in mounted
    assert str(Path(args.usage_db).parent) in mounted  # a read-only root needs a volume there


def test_probes_and_scrapes_hit_the_servers_real_routes(rendered):
    from cormorant.gateway.auth.routes import DEFAULT_RULES, PUBLIC, SCOPE_METRICS

    public = {rule.path for rule in DEFAULT_RULES if rule.scope == PUBLIC}
    assert any(r.path == "/metrics" and r.scope == SCOPE_METRICS for r in DEFAULT_RULES)
    container = rendered["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    probes = [container[p]["httpGet"]["path"]
              for p in ("livenessProbe", "readinessProbe", "startupProbe")]
    assert set(probes) == {"/health", "/ready"} and set(probes) <= public
    monitor = rendered["ServiceMonitor"]
    endpoint = monitor["spec"]["endpoints"][0]
    assert endpoint["path"] == "/metrics" and endpoint["authorization"]["type"] == "Bearer"
    service = rendered["Service"]
    assert endpoint["port"] == service["spec"]["ports"][0]["name"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert service["spec"]["selector"].items() <= \
        rendered["Deployment"]["spec"]["template"]["metadata"]["labels"].items()


def test_the_pods_run_as_the_images_non_root_user(rendered):
    spec = rendered["Deployment"]["spec"]["template"]["spec"]
    for dockerfile in DOCKERFILES:
        text = (ROOT / "deploy/docker" / dockerfile).read_text()
        uid = re.search(r"useradd --uid (\d+)", text).group(1)
        assert re.search(r"^USER cormorant$", text, re.M)
        assert "HEALTHCHECK" in text and "/health" in text
        assert spec["securityContext"]["runAsUser"] == int(uid)
    assert spec["securityContext"]["runAsNonRoot"] is True


def test_the_autoscaler_scales_the_deployment_on_the_engine_queue(rendered):
    hpa = rendered["HorizontalPodAutoscaler"]["spec"]
    assert hpa["scaleTargetRef"]["name"] == rendered["Deployment"]["metadata"]["name"]
    assert hpa["metrics"][0]["pods"]["metric"]["name"] == "vllm_num_requests_waiting"
    # The series prometheus-adapter renames (docs/operations.md) is one the server exports.
    from cormorant.gateway.telemetry import metrics

    assert '"vllm:num_requests_waiting"' in inspect.getsource(metrics)
