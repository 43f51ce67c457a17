"""GET /v1/models and /v1/models/{id}: the models this server serves: the
generation model and any encoders (embeddings / classification) beside it."""
from __future__ import annotations

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from cormorant.gateway.auth import get_principal
from cormorant.server.embedding_protocol import EncoderLike, get_encoder
from cormorant.server.openapi import ERROR_RESPONSES
from cormorant.server.responses import json_response
from cormorant.server.state import ServerState, get_state

router = APIRouter()


def _card(state: ServerState) -> dict:
    return {"id": state.model_name, "object": "model", "created": state.created,
            "owned_by": "cormorant", "max_model_len": state.engine.max_model_len}


@router.get("/v1/models", summary="List models")
async def list_models(request: Request) -> Response:
    state = get_state(request)
    principal = get_principal(request)  # a key limited to some models sees only those
    cards = [_card(state)] if principal is None or principal.may_use_model(state.model_name) \
        else []
    cards += [_encoder_card(state, encoder) for name, encoder in _encoders(request).items()
              if principal is None or principal.may_use_model(name)]
    return json_response({"object": "list", "data": cards})


@router.get("/v1/models/{model_id:path}", responses=ERROR_RESPONSES, summary="Retrieve a model")
async def retrieve_model(request: Request, model_id: str) -> Response:
    state = get_state(request)
    if model_id in _encoders(request):
        return json_response(_encoder_card(state, get_encoder(request, model_id)))
    state.resolve_model(model_id)
    return json_response(_card(state))


def _encoders(request: Request) -> dict:
    return getattr(request.app.state, "encoders", {})


def _encoder_card(state: ServerState, encoder: EncoderLike) -> dict:
    return {"id": encoder.model_name, "object": "model", "created": state.created,
            "owned_by": "cormorant", "max_model_len": encoder.max_model_len}
