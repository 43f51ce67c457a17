"""POST /detokenize: token ids -> text (special tokens kept, so it inverts /tokenize)."""
from __future__ import annotations

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from cormorant.server.openapi import ERROR_RESPONSES, request_body
from cormorant.server.prompts import check_token_ids, off_loop
from cormorant.server.protocol import DetokenizeRequest
from cormorant.server.responses import json_response
from cormorant.server.state import leased_request

router = APIRouter()


@router.post("/detokenize", openapi_extra=request_body("DetokenizeRequest"),
             responses=ERROR_RESPONSES, summary="Detokenize token ids")
async def detokenize(request: Request) -> Response:
    async with leased_request(request, DetokenizeRequest) as (state, req, served):
        ids = check_token_ids(req.tokens, served.vocab_size, "tokens")
        text = await off_loop(state.tokenize_pool, len(ids) * 4, served.tokenizer.decode, ids,
                              False)
    return json_response({"prompt": text}, headers=served.headers())
