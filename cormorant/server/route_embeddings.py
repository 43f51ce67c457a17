"""POST /v1/embeddings: OpenAI's embeddings API, served by an encoder model (BERT family).

Vectors are mean-pooled and unit length; `encoding_format` "base64" sends each as the base64
of its little-endian float32 bytes (what the official client asks for by default and decodes
with numpy). Concurrent requests are batched by the encoder, not here.
Imports starlette, fastapi and server modules.
"""
from __future__ import annotations

import base64
import struct

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from cormorant.server.embedding_protocol import EmbeddingRequest, encoder_inputs
from cormorant.server.openapi import ERROR_RESPONSES, request_body
from cormorant.server.request_admission import batch_limits, metered
from cormorant.server.responses import json_response
from cormorant.server.state import leased_request

router = APIRouter()


def encode_base64(vector: list[float]) -> str:
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")


@router.post("/v1/embeddings", openapi_extra=request_body("EmbeddingRequest"),
             responses=ERROR_RESPONSES, summary="Create embeddings")
async def create_embeddings(request: Request) -> Response:
    async with leased_request(request, EmbeddingRequest, "embed") as (state, req, served):
        seqs = await encoder_inputs(req.input, served.encoder, state.tokenize_pool)
        async with metered(request, state.quotas, state.quota_defaults, sum(map(len, seqs)),
                           batch_limits(state.config)):
            vectors = await served.encoder.embed(seqs)
    pack = encode_base64 if req.encoding_format == "base64" else list
    num_tokens = sum(map(len, seqs))
    return json_response({
        "object": "list", "model": served.model_id,
        "data": [{"object": "embedding", "index": i, "embedding": pack(v)}
                 for i, v in enumerate(vectors)],
        "usage": {"prompt_tokens": num_tokens, "total_tokens": num_tokens}},
        headers=served.headers())
