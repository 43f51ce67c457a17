"""The OpenAPI document, made to list what the server really sends.

Request bodies are parsed by hand (for the strict bounds in server.body), so FastAPI cannot see
their models; this module puts their schemas back into /openapi.json, documents the error shape
and every error status a route can answer (auth 401/403, 408 slow client, 413, 415, 429 quota,
503 overload/drain/engine down), and the text/event-stream body of the streaming routes. The
adversarial suite fuzzes the server against this document (tests/adversarial).
Imports fastapi, pydantic and server protocol modules.
"""
from __future__ import annotations

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic.json_schema import models_json_schema

from cormorant.server.embedding_protocol import ClassificationRequest, EmbeddingRequest
from cormorant.server.protocol import (BatchCreateRequest, ChatCompletionRequest,
                                       CompletionRequest, DetokenizeRequest, TokenizeRequest)
from cormorant.server.responses_protocol import ResponsesRequest

REQUEST_MODELS = (CompletionRequest, ChatCompletionRequest, TokenizeRequest, DetokenizeRequest,
                  EmbeddingRequest, ClassificationRequest, ResponsesRequest, BatchCreateRequest)
STREAMING_PATHS = ("/v1/completions", "/v1/chat/completions", "/v1/responses")
_REF = "#/components/schemas/{model}"

ERROR_SCHEMA = {
    "title": "ErrorResponse", "type": "object", "required": ["error"],
    "properties": {"error": {"type": "object", "required": ["message", "type", "param", "code"],
                             "properties": {"message": {"type": "string"},
                                            "type": {"type": "string"},
                                            "param": {"type": ["string", "null"]},
                                            "code": {"type": ["string", "null"]}}}},
}
_ERROR_CONTENT = {"application/json": {"schema": {"$ref": _REF.format(model="ErrorResponse")}}}
_RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before retrying",
                                "schema": {"type": "integer"}}}
ERROR_RESPONSES: dict = {
    status: {"description": text, "content": _ERROR_CONTENT,
             **({"headers": _RETRY_AFTER} if status in (429, 503) else {})}
    for status, text in ((400, "Invalid request"), (401, "Missing or unknown API key"),
                         (403, "The key lacks the scope or model"), (404, "Unknown model"),
                         (408, "The request was not received in time"),
                         (413, "Body too large"), (415, "Not JSON"),
                         (429, "Rate limit or quota exceeded"),
                         (503, "Overloaded, shutting down, or the engine is down"))}
# One server-sent event (as OpenAPI 3.2's itemSchema describes an event stream): its `data`
# is a JSON chunk, the last one the literal [DONE] (with "stream": true).
_SSE_CONTENT = {"text/event-stream": {"schema": {
    "type": "object", "required": ["data"],
    "description": "Server-sent events: 'data: <JSON chunk>' lines, then 'data: [DONE]'",
    "properties": {"data": {"type": "string"}, "event": {"type": "string"},
                   "id": {"type": "string"}, "retry": {"type": "integer"}}}}}


# POST /v1/files: a multipart upload, as OpenAI's clients send it.
FILE_UPLOAD_BODY = {"requestBody": {"required": True, "content": {"multipart/form-data": {
    "schema": {"type": "object", "required": ["file", "purpose"],
               "properties": {"file": {"type": "string", "format": "binary"},
                              "purpose": {"type": "string", "enum": ["batch"]}}}}}}}
JSONL_CONTENT = {200: {"description": "The file's bytes (JSON Lines)",
                       "content": {"application/jsonl": {"schema": {"type": "string"}}}}}


def request_body(model_name: str) -> dict:
    """For a route's openapi_extra: the body is the named request model, as JSON."""
    return {"requestBody": {"required": True, "content": {"application/json": {
        "schema": {"$ref": _REF.format(model=model_name)}}}}}


def install_openapi(app: FastAPI) -> None:
    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, routes=app.routes,
                                 description=app.description)
            _, defs = models_json_schema([(m, "validation") for m in REQUEST_MODELS],
                                         ref_template=_REF)
            schemas = schema.setdefault("components", {}).setdefault("schemas", {})
            schemas.update(defs.get("$defs", {}))
            schemas["ErrorResponse"] = ERROR_SCHEMA
            _add_error_statuses(schema)
            _add_streaming(schema)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _add_error_statuses(schema: dict) -> None:
    """Every route may answer the documented errors (auth runs before routing, a drain and
    the transport limits apply to all); invalid query or path parameters are a 400 with the
    error shape (server.errors), never FastAPI's 422."""
    for path_item in schema.get("paths", {}).values():
        for operation in path_item.values():
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)
            for status, response in ERROR_RESPONSES.items():
                responses.setdefault(str(status), response)
    schema.get("components", {}).get("schemas", {}).pop("HTTPValidationError", None)
    schema.get("components", {}).get("schemas", {}).pop("ValidationError", None)


def _add_streaming(schema: dict) -> None:
    """The streaming routes answer 200 with text/event-stream when the body asks for it."""
    for path in STREAMING_PATHS:
        operation = schema.get("paths", {}).get(path, {}).get("post")
        if operation is None:
            continue
        ok = operation.setdefault("responses", {}).setdefault(
            "200", {"description": "Successful Response"})
        ok.setdefault("content", {"application/json": {"schema": {}}}).update(_SSE_CONTENT)
