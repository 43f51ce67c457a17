"""POST /v1/responses: OpenAI's Responses API. Thin: the work is in server.serving_responses."""
from __future__ import annotations

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from cormorant.server.openapi import ERROR_RESPONSES, request_body
from cormorant.server.serving_responses import create_response
from cormorant.server.state import get_state

router = APIRouter()


@router.post("/v1/responses", openapi_extra=request_body("ResponsesRequest"),
             responses=ERROR_RESPONSES, summary="Create a model response")
async def responses(request: Request) -> Response:
    return await create_response(request, get_state(request))
