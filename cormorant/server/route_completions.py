"""POST /v1/completions. Thin: the work is in server.serving_completions."""
from __future__ import annotations

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from cormorant.server.openapi import ERROR_RESPONSES, request_body
from cormorant.server.serving_completions import create_completion
from cormorant.server.state import get_state

router = APIRouter()


@router.post("/v1/completions", openapi_extra=request_body("CompletionRequest"),
             responses=ERROR_RESPONSES, summary="Create a completion")
async def completions(request: Request) -> Response:
    return await create_completion(request, get_state(request))
