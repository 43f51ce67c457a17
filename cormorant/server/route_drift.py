"""GET /admin/drift (admin scope): the drift report, per model version and per canary split.

The report is gateway.telemetry.drift's; this route adds what only the server knows: which
versions each alias splits traffic between. The version with the largest weight is the
baseline, every other version with a weight is a canary compared with it. 404 when drift
monitoring is off (`--no-drift`). `install` also hands the monitor its encoder
(`--drift-embedding-model`), taken from the model pool like any other model.
`add_drift_args`, `drift_args_error` and `drift_settings` are its `cormorant serve` flags.
Imports fastapi, hosting's registry and server modules.
"""
from __future__ import annotations

import argparse
from typing import Any

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from cormorant.gateway.telemetry.request_log import TelemetryConfigError
from cormorant.server.errors import APIError
from cormorant.server.openapi import ERROR_RESPONSES
from cormorant.server.responses import json_response
from cormorant.server.state import ServerState, get_state

router = APIRouter()
Labels = tuple[str, str]


def _labels(state: ServerState, model_id: str) -> Labels:
    """The (name, version) a model id's metrics and drift rows are labelled with."""
    deployment = state.pool.deployments.get(model_id)
    if deployment is not None:
        return deployment.served.labels
    spec = state.registry.specs[model_id]
    return spec.name, spec.version


def canary_pairs(state: ServerState) -> list[tuple[str, Labels, Labels]]:
    """(alias, baseline, canary) for every alias that splits traffic over several versions."""
    pairs = []
    for alias, targets in state.registry.aliases.items():
        live = sorted(((w, i, t) for i, (t, w) in enumerate(targets.items()) if w > 0),
                      key=lambda x: (-x[0], x[1]))
        if len(live) < 2:
            continue
        baseline = _labels(state, live[0][2])
        pairs += [(alias, baseline, _labels(state, t)) for _, _, t in live[1:]]
    return pairs


def install(state: ServerState) -> None:
    """Let the drift gauges see the registry's splits at scrape time, and the monitor embed
    prompts with the encoder `--drift-embedding-model` names."""
    collector, monitor = state.telemetry.drift_collector, state.telemetry.drift
    if collector is not None:
        collector.canaries = lambda: canary_pairs(state)
    name = state.config.drift_embedding_model
    if monitor is None or name is None:
        return
    model_id = state.registry.route(name)
    if model_id is None or state.registry.specs[model_id].kind != "embed":
        raise TelemetryConfigError(f"--drift-embedding-model {name!r} is no served embedding "
                                   "model")

    async def embed(text: str) -> list[float]:
        # Straight from the pool: the monitor's work, not the caller's (no key checks).
        async with await state.pool.acquire_id(model_id) as deployment:
            encoder = deployment.served.encoder
            ids = encoder.tokenize(text)[:encoder.max_model_len]
            return (await encoder.embed([ids]))[0]

    monitor.embed = embed


@router.get("/admin/drift", responses=ERROR_RESPONSES, summary="Drift report")
async def get_drift(request: Request) -> Response:
    state = get_state(request)
    monitor = state.telemetry.drift
    if monitor is None:
        raise APIError(404, "Drift monitoring is off (--no-drift).", code="not_found")
    return json_response(monitor.report(canary_pairs(state)))


def add_drift_args(parser: argparse.ArgumentParser) -> None:
    drift = parser.add_argument_group("drift monitoring (GET /admin/drift, cormorant:drift_*)")
    drift.add_argument("--no-drift", dest="drift", action="store_false",
                       help="turn drift monitoring off")
    drift.add_argument("--drift-window", type=int, default=500,
                       help="requests in each model version's rolling window (default 500)")
    drift.add_argument("--drift-reference-size", type=int, default=500,
                       help="the first N requests of a version are its reference (default 500)")
    drift.add_argument("--drift-reference", default=None, metavar="JSONL",
                       help="pin the reference: a JSONL file of features or prompt/output "
                            "text (docs/operations.md)")
    drift.add_argument("--drift-min-requests", type=int, default=50,
                       help="requests each side needs before a feature is scored (default 50)")
    drift.add_argument("--drift-embedding-model", default=None, metavar="NAME",
                       help="a served embedding model: also compare prompt embeddings "
                            "(centroid shift)")
    drift.add_argument("--drift-embedding-every", type=int, default=1, metavar="K",
                       help="embed every K-th prompt (default 1)")
    drift.add_argument("--no-drift-logprobs", dest="drift_logprobs", action="store_false",
                       help="do not ask the engine for chosen-token logprobs (no mean_logprob "
                            "feature, except for requests that ask for logprobs)")


def drift_args_error(args: argparse.Namespace) -> str | None:
    if min(args.drift_window, args.drift_reference_size, args.drift_min_requests) < 2:
        return "--drift-window, --drift-reference-size and --drift-min-requests must be >= 2"
    if args.drift_embedding_every < 1:
        return "--drift-embedding-every must be >= 1"
    return None


def drift_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The ServerConfig fields of the drift flags."""
    return {"drift": args.drift, "drift_window": args.drift_window,
            "drift_reference_size": args.drift_reference_size,
            "drift_reference_file": args.drift_reference,
            "drift_min_requests": args.drift_min_requests,
            "drift_logprobs": args.drift and args.drift_logprobs,
            "drift_embedding_model": args.drift_embedding_model,
            "drift_embedding_every": args.drift_embedding_every}
