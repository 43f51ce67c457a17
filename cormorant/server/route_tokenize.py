"""POST /tokenize: text or chat messages -> token ids, as the served model sees them."""
from __future__ import annotations

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from cormorant.server.openapi import ERROR_RESPONSES, request_body
from cormorant.server.prompts import ChatInputs, chat_prompt, off_loop
from cormorant.server.protocol import TokenizeRequest
from cormorant.server.responses import json_response
from cormorant.server.state import leased_request

router = APIRouter()


@router.post("/tokenize", openapi_extra=request_body("TokenizeRequest"),
             responses=ERROR_RESPONSES, summary="Tokenize a prompt or messages")
async def tokenize(request: Request) -> Response:
    async with leased_request(request, TokenizeRequest) as (state, req, served):
        if req.prompt is not None:
            ids = await off_loop(state.tokenize_pool, len(req.prompt), served.tokenizer.encode,
                                 req.prompt, req.add_special_tokens)
        else:
            tools = [t.model_dump(exclude_none=True) for t in req.tools or []] or None
            prompt = await chat_prompt(req.messages or [], served.tokenizer,
                                       state.tokenize_pool, req.add_generation_prompt,
                                       inputs=ChatInputs(tools, req.chat_template_kwargs or {}))
            ids = prompt.token_ids
    return json_response({"count": len(ids), "max_model_len": served.max_model_len,
                          "tokens": list(ids)}, headers=served.headers())
