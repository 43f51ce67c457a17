"""/v1/batches: create, retrieve, list and cancel batch jobs (OpenAI's Batch API).

A batch names an uploaded input file whose every line targets the batch's `endpoint`, and a
`completion_window` of "24h" (its length is ServerConfig.batch_window_s). It is answered at
once in status "validating"; server.batch_worker takes it from there. `request_counts`
(total, completed, failed) are counted from the stored line results on every read.
Imports starlette, fastapi, pydantic and server modules.
"""
from __future__ import annotations

import asyncio
import secrets
import time

from fastapi import APIRouter, Query
from starlette.requests import Request
from starlette.responses import Response

from cormorant.gateway.crypto import DataKeyError
from cormorant.server.batch_input import ENDPOINTS, parse_batch_file
from cormorant.server.batch_jobs import (caller, data_key_error, jobs_of, not_found, owned,
                                         public)
from cormorant.server.batch_lines import principal_doc
from cormorant.server.body import read_request
from cormorant.server.errors import APIError
from cormorant.server.openapi import ERROR_RESPONSES, request_body
from cormorant.server.protocol import BatchCreateRequest
from cormorant.server.responses import json_response

router = APIRouter()
CANCELLABLE = ("validating", "in_progress")


def _check_metadata(metadata: dict[str, str] | None) -> None:
    for key, value in (metadata or {}).items():
        if len(key) > 64 or len(value) > 512:
            raise APIError(400, "metadata keys are at most 64 characters and values at most "
                           "512.", param="metadata", code="invalid_value")


async def _lines(request: Request, req: BatchCreateRequest) -> list[tuple[str, dict]]:
    jobs, state = jobs_of(request), request.app.state.cormorant
    file = await jobs.store.call(jobs.store.get_file, req.input_file_id, caller(request).key_id)
    if file is None:
        raise not_found("file", req.input_file_id)
    if file["purpose"] != "batch":
        raise APIError(400, "The input file must have purpose 'batch'.",
                       param="input_file_id", code="invalid_value")
    try:
        data = await asyncio.to_thread(jobs.vault.read, file["id"])
    except DataKeyError as exc:
        raise data_key_error(exc) from None
    cfg = state.config
    lines = await asyncio.to_thread(parse_batch_file, data, cfg.batch_max_file_bytes,
                                    cfg.batch_max_lines, state.validation_context)
    for number, (_, line) in enumerate(lines, 1):
        if line["url"] != req.endpoint:
            raise APIError(400, f"Request {number} of the input file is for {line['url']}, "
                           f"not the batch's endpoint {req.endpoint}.", param="endpoint",
                           code="invalid_value")
    return lines


@router.post("/v1/batches", openapi_extra=request_body("BatchCreateRequest"),
             responses=ERROR_RESPONSES, summary="Create a batch")
async def create_batch(request: Request) -> Response:
    jobs, state = jobs_of(request), request.app.state.cormorant
    req = await read_request(request, BatchCreateRequest)
    _check_metadata(req.metadata)
    assert req.endpoint in ENDPOINTS
    lines = await _lines(request, req)
    principal, now = caller(request), int(time.time())
    doc = {"id": "batch_" + secrets.token_hex(12), "object": "batch",
           "endpoint": req.endpoint, "errors": None, "input_file_id": req.input_file_id,
           "completion_window": req.completion_window, "status": "validating",
           "output_file_id": None, "error_file_id": None, "created_at": now,
           "in_progress_at": None, "expires_at": now + int(state.config.batch_window_s),
           "finalizing_at": None, "completed_at": None, "failed_at": None, "expired_at": None,
           "cancelling_at": None, "cancelled_at": None, "metadata": req.metadata,
           "_owner": principal.key_id, "_principal": principal_doc(principal)}
    await jobs.store.call(jobs.store.create_batch, doc, principal.key_id, lines)
    jobs.worker.wake()
    doc["request_counts"] = {"total": len(lines), "completed": 0, "failed": 0}
    return json_response(public(doc))


@router.get("/v1/batches/{batch_id}", responses=ERROR_RESPONSES, summary="Retrieve a batch")
async def get_batch(request: Request, batch_id: str) -> Response:
    return json_response(public(await owned(request, "batch", batch_id)))


@router.get("/v1/batches", responses=ERROR_RESPONSES, summary="List batches")
async def list_batches(request: Request, after: str | None = Query(None, max_length=128),
                       limit: int = Query(20, ge=1, le=100)) -> Response:
    jobs = jobs_of(request)
    docs = await jobs.store.call(jobs.store.list_batches, caller(request).key_id, after,
                                 limit + 1)
    data = [public(d) for d in docs[:limit]]
    return json_response({"object": "list", "data": data,
                          "first_id": data[0]["id"] if data else None,
                          "last_id": data[-1]["id"] if data else None,
                          "has_more": len(docs) > limit})


@router.post("/v1/batches/{batch_id}/cancel", responses=ERROR_RESPONSES,
             summary="Cancel a batch")
async def cancel_batch(request: Request, batch_id: str) -> Response:
    jobs, doc = jobs_of(request), await owned(request, "batch", batch_id)
    if doc["status"] in CANCELLABLE:
        doc["status"], doc["cancelling_at"] = "cancelling", int(time.time())
        if not await jobs.store.call(jobs.store.save_batch, doc, CANCELLABLE):
            doc = await owned(request, "batch", batch_id)  # it moved on meanwhile
        jobs.worker.wake()
    elif doc["status"] not in ("cancelling", "cancelled"):
        raise APIError(400, f"The batch is {doc['status']}; only a batch that is validating "
                       "or in progress can be cancelled.", code="invalid_state")
    return json_response(public(doc))
