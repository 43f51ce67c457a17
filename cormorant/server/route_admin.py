"""/admin/models and /admin/aliases (admin scope): model versions and aliases at run time.

Register, load, unload and reload model versions, and point aliases at versions (a swap, or a
canary split).
A swap is `PUT /admin/aliases/{alias}` with the new targets: every target is loaded and
warmed first, then the alias switches in one step, then versions nothing routes to any more
drain and unload. Anything that fails (a bad source, not enough memory, a model that does not
load) answers 4xx/5xx with the reason and leaves what was serving untouched. Sources are
registry ids resolved under the configured model roots, never client paths.
`cormorant models ...` (hosting.admin_cli) is the command-line client of these routes.
Imports fastapi, pydantic, server modules and hosting's registry and pool.
"""
from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import Response

from cormorant.hosting.pool import LoadError, ModelNotFound
from cormorant.hosting.registry import ModelSpec, RegistryError
from cormorant.server.body import read_request
from cormorant.server.errors import APIError, bound
from cormorant.server.openapi import ERROR_RESPONSES
from cormorant.server.responses import json_response
from cormorant.server.state import ServerState, get_state

router = APIRouter()


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)


class RegisterRequest(_Strict):
    name: str = Field(min_length=1, max_length=128)
    version: str = Field("1", max_length=128)
    source: str = Field(min_length=1, max_length=1024)
    kind: str = "generate"
    dtype: str = "auto"
    device: str = "auto"
    engine: dict[str, Any] = Field(default_factory=dict)
    limits: dict[str, Any] = Field(default_factory=dict)
    ray: dict[str, Any] = Field(default_factory=dict)  # its replicas under `serve --ray`
    fallbacks: list[str] = Field(default_factory=list, max_length=16)
    memory: int | str | None = None
    load: bool = True


class AliasRequest(_Strict):
    targets: dict[str, float] = Field(min_length=1, max_length=64)
    unload_replaced: bool = True


def status(state: ServerState) -> dict:
    pool, registry = state.pool, state.registry
    models = []
    for spec in registry.specs.values():
        d = pool.deployments.get(spec.id)
        models.append({"id": spec.id, "name": spec.name, "version": spec.version,
                       "kind": spec.kind, "source": spec.source, "loaded": d is not None,
                       "instance": d.instance if d else None,
                       "memory_bytes": d.served.memory_bytes if d else 0,
                       "in_flight": d.in_flight if d else 0,
                       "fallbacks": list(spec.fallbacks)})
    return {"models": models, "aliases": registry.aliases,
            "memory_used_bytes": pool.memory_used,
            "memory_budget_bytes": registry.settings.memory_budget}


async def _guard(coro) -> Any:
    """Registry and pool failures as API errors that say what went wrong."""
    try:
        return await coro
    except ModelNotFound as exc:
        raise APIError(404, f"Unknown model '{bound(exc, 128)}'.", code="model_not_found") \
            from None
    except RegistryError as exc:
        raise APIError(400, str(exc), code="invalid_value") from None
    except LoadError as exc:
        raise APIError(503, str(exc), code="model_load_failed") from None


@router.get("/admin/models", responses=ERROR_RESPONSES, summary="Models, aliases and memory")
async def get_models(request: Request) -> Response:
    return json_response(status(get_state(request)))


@router.post("/admin/models", responses=ERROR_RESPONSES, summary="Register a model version")
async def register(request: Request) -> Response:
    state = get_state(request)
    req = await read_request(request, RegisterRequest)
    data = req.model_dump(exclude={"load"})
    try:
        spec = ModelSpec.from_dict({k: v for k, v in data.items() if v is not None})
    except RegistryError as exc:
        raise APIError(400, str(exc), code="invalid_value") from None
    await _guard(state.pool.register(spec, load=req.load))
    return json_response(status(state), status=201)


@router.post("/admin/models/{model_id}/{action}", responses=ERROR_RESPONSES,
             summary="Load, unload or reload a model version")
async def model_action(request: Request, model_id: str, action: str) -> Response:
    state = get_state(request)
    if model_id not in state.registry.specs:
        raise APIError(404, f"Unknown model '{bound(model_id, 128)}'.", code="model_not_found")
    if action == "load":
        await _guard(state.pool.ensure_loaded(model_id))
    elif action == "unload":
        await _guard(state.pool.unload(model_id))
    elif action == "reload":
        await _guard(state.pool.reload(model_id))
    else:
        raise APIError(404, "Unknown action; use load, unload or reload.", code="not_found")
    return json_response(status(state))


@router.delete("/admin/models/{model_id}", responses=ERROR_RESPONSES,
               summary="Unregister an unloaded model version")
async def unregister(request: Request, model_id: str) -> Response:
    state = get_state(request)
    if model_id in state.pool.deployments:
        raise APIError(409, f"{bound(model_id, 128)} is loaded; unload it first.",
                       code="model_loaded")
    try:
        state.registry.remove(model_id)
    except RegistryError as exc:
        raise APIError(400, str(exc), code="invalid_value") from None
    return json_response(status(state))


@router.put("/admin/aliases/{alias}", responses=ERROR_RESPONSES,
            summary="Point an alias at versions (swap, canary)")
async def put_alias(request: Request, alias: str) -> Response:
    state = get_state(request)
    req = await read_request(request, AliasRequest)
    await _guard(state.pool.set_alias(alias, req.targets, req.unload_replaced))
    return json_response(status(state))


@router.delete("/admin/aliases/{alias}", responses=ERROR_RESPONSES, summary="Remove an alias")
async def delete_alias(request: Request, alias: str) -> Response:
    state = get_state(request)
    try:
        state.registry.remove_alias(alias)
    except RegistryError as exc:
        raise APIError(404, str(exc), code="not_found") from None
    return json_response(status(state))
