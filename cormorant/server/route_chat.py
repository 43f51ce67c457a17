"""POST /v1/chat/completions. Thin: the work is in server.serving_chat."""
from __future__ import annotations

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from cormorant.server.openapi import ERROR_RESPONSES, request_body
from cormorant.server.serving_chat import create_chat_completion
from cormorant.server.state import get_state

router = APIRouter()


@router.post("/v1/chat/completions", openapi_extra=request_body("ChatCompletionRequest"),
             responses=ERROR_RESPONSES, summary="Create a chat completion")
async def chat_completions(request: Request) -> Response:
    return await create_chat_completion(request, get_state(request))
