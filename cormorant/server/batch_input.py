"""A batch input file, checked line by line at upload: any bad line is a 400 that names it.

OpenAI's input format: one JSON object per line, `{"custom_id", "method": "POST", "url",
"body"}`, with `url` one of /v1/chat/completions, /v1/completions, /v1/embeddings and `body`
that endpoint's request, validated here by the same request models (and the same strict JSON
parsing) as the HTTP routes. custom_ids are unique in a file; streaming is refused (a batch
answers with whole bodies). Caps: the file's bytes and its number of lines (ServerConfig).
Imports server.body, server.protocol, server.embedding_protocol and server.errors.
"""
from __future__ import annotations

from pydantic import BaseModel

from cormorant.server.body import parse_json_object, validate_model
from cormorant.server.embedding_protocol import EmbeddingRequest
from cormorant.server.errors import APIError, bound
from cormorant.server.protocol import ChatCompletionRequest, CompletionRequest

ENDPOINTS: dict[str, type[BaseModel]] = {
    "/v1/chat/completions": ChatCompletionRequest,
    "/v1/completions": CompletionRequest,
    "/v1/embeddings": EmbeddingRequest,
}
MAX_CUSTOM_ID_CHARS = 512
_KEYS = {"custom_id", "method", "url", "body"}


def _line_error(number: int, message: str) -> APIError:
    return APIError(400, f"Line {number} of the batch file is invalid: {message}",
                    param="file", code="invalid_batch_line")


def parse_batch_file(data: bytes, max_bytes: int, max_lines: int, context: dict
                     ) -> list[tuple[str, dict]]:
    """(custom_id, {"url", "body"}) per non-blank line, in order; APIError(400) otherwise."""
    if len(data) > max_bytes:
        raise APIError(400, f"The file has {len(data)} bytes; batch files may have at most "
                       f"{max_bytes}.", param="file", code="file_too_large")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise APIError(400, f"The file is not valid UTF-8 (byte {exc.start}).", param="file",
                       code="invalid_encoding") from None
    lines = [(i + 1, line) for i, line in enumerate(text.split("\n")) if line.strip()]
    if not lines:
        raise APIError(400, "The batch file has no requests.", param="file",
                       code="empty_file")
    if len(lines) > max_lines:
        raise APIError(400, f"The batch file has {len(lines)} requests; at most {max_lines} "
                       "are accepted.", param="file", code="too_many_lines")
    seen: set[str] = set()
    out = []
    for number, line in lines:
        custom_id, request = _parse_line(number, line, context)
        if custom_id in seen:
            raise _line_error(number, f"the custom_id '{bound(custom_id, 128)}' is used by an "
                              "earlier line; custom_ids must be unique within a file.")
        seen.add(custom_id)
        out.append((custom_id, request))
    return out


def _parse_line(number: int, line: str, context: dict) -> tuple[str, dict]:
    try:
        obj = parse_json_object(line.encode("utf-8"))
    except APIError as err:
        raise _line_error(number, err.message) from None
    extra = sorted(set(obj) - _KEYS)
    if extra:
        raise _line_error(number, f"unknown field '{bound(extra[0], 64)}'; a line has "
                          "custom_id, method, url and body.")
    custom_id = obj.get("custom_id")
    if not isinstance(custom_id, str) or not 0 < len(custom_id) <= MAX_CUSTOM_ID_CHARS:
        raise _line_error(number, "custom_id must be a non-empty string of at most "
                          f"{MAX_CUSTOM_ID_CHARS} characters.")
    if obj.get("method") != "POST":
        raise _line_error(number, "method must be \"POST\".")
    url = obj.get("url")
    model_cls = ENDPOINTS.get(url) if isinstance(url, str) else None
    if model_cls is None:
        raise _line_error(number, f"url must be one of {', '.join(ENDPOINTS)}.")
    body = obj.get("body")
    if not isinstance(body, dict):
        raise _line_error(number, "body must be a JSON object (the request of its url).")
    try:
        req = validate_model(model_cls, body, context)
    except APIError as err:
        raise _line_error(number, err.message) from None
    if getattr(req, "stream", False):
        raise _line_error(number, "stream is not supported in a batch; each line is "
                          "answered with a whole response body.")
    return custom_id, {"url": url, "body": body}
