"""The OpenAPI document: request bodies are parsed by hand (for the strict bounds in
server.body), so FastAPI cannot see their models; this module puts their schemas back into
/openapi.json and documents the error shape. Imports fastapi, pydantic and server.protocol.
"""
from __future__ import annotations

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic.json_schema import models_json_schema

from cormorant.server.protocol import (ChatCompletionRequest, CompletionRequest,
                                       DetokenizeRequest, TokenizeRequest)

REQUEST_MODELS = (CompletionRequest, ChatCompletionRequest, TokenizeRequest, DetokenizeRequest)
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
ERROR_RESPONSES: dict = {status: {"description": text, "content": _ERROR_CONTENT}
                         for status, text in ((400, "Invalid request"), (401, "Unauthorized"),
                                              (404, "Unknown model"), (413, "Body too large"),
                                              (415, "Not JSON"), (503, "Overloaded or "
                                                                      "shutting down"))}


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
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
