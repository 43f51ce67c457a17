"""POST /v1/classify: a sequence-classification head (e.g. sentiment) over each input.

Not part of OpenAI's API; the body is vLLM's: {"model", "input"} in, and per input
{"index", "label", "probs", "num_classes"} out, with probs indexed by class id and label the
most probable class's id2label name. Imports starlette, fastapi and server modules.
"""
from __future__ import annotations

import time

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from cormorant.server.embedding_protocol import ClassificationRequest, encoder_inputs
from cormorant.server.errors import APIError, bound
from cormorant.server.openapi import ERROR_RESPONSES, request_body
from cormorant.server.request_admission import metered
from cormorant.server.responses import json_response, new_id
from cormorant.server.state import leased_request

router = APIRouter()


@router.post("/v1/classify", openapi_extra=request_body("ClassificationRequest"),
             responses=ERROR_RESPONSES, summary="Classify texts")
async def classify(request: Request) -> Response:
    async with leased_request(request, ClassificationRequest, "embed") as (state, req, served):
        if not served.encoder.is_classifier:
            raise APIError(400, f"The model '{bound(served.model_id, 128)}' has no "
                           "classification head; use /v1/embeddings.", param="model",
                           code="invalid_value")
        seqs = await encoder_inputs(req.input, served.encoder, state.tokenize_pool)
        async with metered(request, state.quotas, state.quota_defaults, sum(map(len, seqs))):
            results = await served.encoder.classify(seqs)
    num_tokens = sum(map(len, seqs))
    return json_response({
        "id": new_id("classify"), "object": "list", "created": int(time.time()),
        "model": served.model_id,
        "data": [{"index": i, "label": r.label, "probs": r.probs, "num_classes": len(r.probs)}
                 for i, r in enumerate(results)],
        "usage": {"prompt_tokens": num_tokens, "total_tokens": num_tokens,
                  "completion_tokens": 0}}, headers=served.headers())
