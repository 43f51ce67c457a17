"""/v1/files: upload (purpose "batch", every line checked), list, metadata, content, delete.

An upload is multipart form data with `file` and `purpose`, as the official clients send it.
Only batch input files are accepted; each line is validated at once (server.batch_input), so a
bad line is a 400 naming it and never a failed batch later. Produced files (a batch's output
and errors, purpose "batch_output") are read with GET /v1/files/{id}/content.
Imports starlette, fastapi and server modules.
"""
from __future__ import annotations

import asyncio

from fastapi import APIRouter, Query
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import Response

from cormorant.gateway.batch.files import new_file_id
from cormorant.gateway.crypto import DataKeyError
from cormorant.server.batch_input import parse_batch_file
from cormorant.server.batch_jobs import (caller, data_key_error, jobs_of, not_found, owned,
                                         public)
from cormorant.server.batch_worker import file_doc
from cormorant.server.errors import APIError
from cormorant.server.openapi import ERROR_RESPONSES, FILE_UPLOAD_BODY, JSONL_CONTENT
from cormorant.server.responses import json_response

router = APIRouter()


async def _upload(request: Request) -> tuple[bytes, str, str]:
    """(bytes, filename, purpose) of a multipart upload."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise APIError(415, "Upload files as multipart/form-data with 'file' and 'purpose'.",
                       code="unsupported_media_type")
    try:
        form = await request.form(max_files=1, max_fields=8)
    except Exception as exc:  # malformed multipart: python-multipart's or starlette's error
        raise APIError(400, f"The multipart body could not be parsed: {exc}",
                       code="invalid_multipart") from None
    upload, purpose = form.get("file"), form.get("purpose")
    if not isinstance(upload, UploadFile):
        raise APIError(400, "The 'file' field is missing.", param="file",
                       code="missing_required_parameter")
    if purpose != "batch":
        raise APIError(400, "Only purpose 'batch' is supported.", param="purpose",
                       code="invalid_value")
    data = await upload.read()
    await form.close()
    return data, (upload.filename or "upload.jsonl")[:256], purpose


@router.post("/v1/files", openapi_extra=FILE_UPLOAD_BODY, responses=ERROR_RESPONSES,
             summary="Upload a batch input file")
async def create_file(request: Request) -> Response:
    jobs, owner = jobs_of(request), caller(request).key_id
    state = request.app.state.cormorant
    data, filename, purpose = await _upload(request)
    cfg = state.config
    await asyncio.to_thread(parse_batch_file, data, cfg.batch_max_file_bytes,
                            cfg.batch_max_lines, state.validation_context)
    doc = file_doc(new_file_id(), filename, purpose, len(data))
    await asyncio.to_thread(jobs.vault.write, doc["id"], data)
    await jobs.store.call(jobs.store.put_file, doc, owner)
    return json_response(doc)


@router.get("/v1/files", responses=ERROR_RESPONSES, summary="List your files")
async def list_files(request: Request, purpose: str | None = Query(None, max_length=64),
                     limit: int = Query(10_000, ge=1, le=10_000)) -> Response:
    jobs = jobs_of(request)
    docs = await jobs.store.call(jobs.store.list_files, caller(request).key_id, purpose,
                                 limit + 1)
    return json_response({"object": "list", "data": [public(d) for d in docs[:limit]],
                          "has_more": len(docs) > limit})


@router.get("/v1/files/{file_id}", responses=ERROR_RESPONSES, summary="A file's metadata")
async def get_file(request: Request, file_id: str) -> Response:
    return json_response(public(await owned(request, "file", file_id)))


@router.get("/v1/files/{file_id}/content", responses={**ERROR_RESPONSES, **JSONL_CONTENT},
            summary="A file's content")
async def get_file_content(request: Request, file_id: str) -> Response:
    doc = await owned(request, "file", file_id)
    try:
        data = await asyncio.to_thread(jobs_of(request).vault.read, doc["id"])
    except KeyError:
        raise not_found("file", file_id) from None
    except DataKeyError as exc:
        raise data_key_error(exc) from None
    return Response(data, media_type="application/jsonl")


@router.delete("/v1/files/{file_id}", responses=ERROR_RESPONSES, summary="Delete a file")
async def delete_file(request: Request, file_id: str) -> Response:
    doc = await owned(request, "file", file_id)
    jobs = jobs_of(request)
    await jobs.store.call(jobs.store.delete_file, doc["id"], caller(request).key_id)
    await asyncio.to_thread(jobs.vault.delete, doc["id"])
    return json_response({"id": doc["id"], "object": "file", "deleted": True})
