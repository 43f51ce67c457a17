"""GET /v1/models and /v1/models/{id}: the models this server serves (one, for now)."""
from __future__ import annotations

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from cormorant.server.openapi import ERROR_RESPONSES
from cormorant.server.responses import json_response
from cormorant.server.state import ServerState, get_state

router = APIRouter()


def _card(state: ServerState) -> dict:
    return {"id": state.model_name, "object": "model", "created": state.created,
            "owned_by": "cormorant", "max_model_len": state.engine.max_model_len}


@router.get("/v1/models", summary="List models")
async def list_models(request: Request) -> Response:
    return json_response({"object": "list", "data": [_card(get_state(request))]})


@router.get("/v1/models/{model_id:path}", responses=ERROR_RESPONSES, summary="Retrieve a model")
async def retrieve_model(request: Request, model_id: str) -> Response:
    state = get_state(request)
    state.resolve_model(model_id)
    return json_response(_card(state))
