"""GET /v1/models and /v1/models/{id}: every model version and alias the server answers with.

Versions loaded or loaded on demand, with their kinds and canary weights.
"""
from __future__ import annotations

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from cormorant.gateway.auth.keys import Principal
from cormorant.gateway.auth.middleware import get_principal
from cormorant.hosting.registry import ModelSpec
from cormorant.server.errors import APIError, bound
from cormorant.server.openapi import ERROR_RESPONSES
from cormorant.server.responses import json_response
from cormorant.server.state import ServerState, get_state

router = APIRouter()


def _model_card(state: ServerState, spec: ModelSpec) -> dict:
    deployment = state.pool.deployments.get(spec.id)
    card = {"id": spec.id, "object": "model", "created": state.created,
            "owned_by": "cormorant", "name": spec.name, "version": spec.version,
            "kind": spec.kind, "loaded": deployment is not None}
    if deployment is not None:
        card["max_model_len"] = deployment.served.max_model_len
    return card


def _alias_card(state: ServerState, alias: str, targets: dict[str, float]) -> dict:
    total = sum(targets.values()) or 1.0
    return {"id": alias, "object": "model", "created": state.created, "owned_by": "cormorant",
            "alias_of": {t: round(w / total, 6) for t, w in targets.items()}}


def _cards(state: ServerState, principal: Principal | None) -> list[dict]:
    def allowed(*names: str) -> bool:
        return principal is None or any(principal.may_use_model(n) for n in names)

    registry = state.registry
    cards = [_model_card(state, spec) for spec in registry.specs.values()
             if allowed(spec.id, spec.name)]
    cards += [_alias_card(state, alias, targets) for alias, targets in registry.aliases.items()
              if allowed(alias)]
    return cards


@router.get("/v1/models", summary="List models")
async def list_models(request: Request) -> Response:
    cards = _cards(get_state(request), get_principal(request))
    return json_response({"object": "list", "data": cards})


@router.get("/v1/models/{model_id:path}", responses=ERROR_RESPONSES, summary="Retrieve a model")
async def retrieve_model(request: Request, model_id: str) -> Response:
    for card in _cards(get_state(request), get_principal(request)):
        if card["id"] == model_id:
            return json_response(card)
    raise APIError(404, f"The model '{bound(model_id, 128)}' does not exist or you do not "
                   "have access to it.", param="model", code="model_not_found")
