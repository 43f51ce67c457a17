"""Turning request bytes into a validated pydantic request model, refusing anything odd.

The body arrives already capped in size by the limits middleware. Here: the content type must
be JSON, the bytes strict UTF-8, the JSON an object without NaN/Infinity, without numbers of
absurd length (Python would happily build a 4-million-digit int) and without nesting deep
enough to exhaust the parser's recursion, and without lone UTF-16 surrogates ("\\ud800" is
valid JSON but not Unicode text: no tokenizer, template or stop matcher can take it).
Imports starlette, pydantic and server.errors.
"""
from __future__ import annotations

import json
import re
from typing import TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from cormorant.server.errors import APIError, from_validation_error, loc_to_param

M = TypeVar("M", bound=BaseModel)

# Long enough for any int64/uint64 and any float repr, short enough that parsing is trivial.
MAX_NUMBER_CHARS = 40
# A \u escape of a UTF-16 surrogate; only bodies that have one are searched for a lone one.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89abcdefABCDEF]")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


class _BadNumber(ValueError):
    pass


def _parse_int(text: str) -> int:
    if len(text) > MAX_NUMBER_CHARS:
        raise _BadNumber(f"a number in the request has {len(text)} digits; "
                         f"at most {MAX_NUMBER_CHARS} are accepted")
    return int(text)


def _parse_float(text: str) -> float:
    if len(text) > MAX_NUMBER_CHARS:
        raise _BadNumber(f"a number in the request is {len(text)} characters long; "
                         f"at most {MAX_NUMBER_CHARS} are accepted")
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise _BadNumber("a number in the request is out of the representable range")
    return value


def _reject_constant(name: str) -> float:
    raise _BadNumber(f"{name} is not valid JSON")


def is_json_content_type(content_type: str | None) -> bool:
    if not content_type:
        return False
    media, _, params = content_type.partition(";")
    media = media.strip().lower()
    if media != "application/json" and not (media.startswith("application/")
                                            and media.endswith("+json")):
        return False
    charset = params.lower().replace(" ", "")
    return "charset=" not in charset or "charset=utf-8" in charset or "charset=\"utf-8\"" in charset


def parse_json_object(raw: bytes) -> dict:
    """Strict UTF-8, bounded numbers, bounded depth; raises APIError(400) on anything else."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise APIError(400, f"The request body is not valid UTF-8 (byte {exc.start}).",
                       code="invalid_encoding") from None
    try:
        obj = json.loads(text, parse_int=_parse_int, parse_float=_parse_float,
                         parse_constant=_reject_constant)
    except _BadNumber as exc:
        raise APIError(400, f"We could not parse the JSON body of your request: {exc}.",
                       code="invalid_json") from None
    except json.JSONDecodeError as exc:
        raise APIError(400, "We could not parse the JSON body of your request: "
                       f"{exc.msg} at line {exc.lineno} column {exc.colno}.",
                       code="invalid_json") from None
    except (RecursionError, ValueError):
        raise APIError(400, "We could not parse the JSON body of your request: it is nested "
                       "too deeply or malformed.", code="invalid_json") from None
    if not isinstance(obj, dict):
        raise APIError(400, "The request body must be a JSON object, "
                       f"not a JSON {type(obj).__name__}.", code="invalid_json")
    if _SURROGATE_ESCAPE.search(text):
        try:
            _reject_lone_surrogates(obj, [])
        except RecursionError:
            raise APIError(400, "The request is nested too deeply.",
                           code="invalid_json") from None
    return obj


def _reject_lone_surrogates(value: object, path: list[str | int]) -> None:
    """400 naming the first string (or key) that holds a lone surrogate; pairs were combined
    by the JSON parser, so any surrogate left is unpaired."""
    if isinstance(value, str):
        match = _LONE_SURROGATE.search(value)
        if match is not None:
            param = loc_to_param(path) or None
            raise APIError(400, f"Invalid value for '{param or 'body'}': the text contains an "
                           f"unpaired UTF-16 surrogate (\\u{ord(match.group()):04x} at "
                           f"character {match.start()}), which is not valid Unicode.",
                           param=param, code="invalid_encoding")
    elif isinstance(value, dict):
        for key, item in value.items():
            _reject_lone_surrogates(key, path)
            _reject_lone_surrogates(item, [*path, key])
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _reject_lone_surrogates(item, [*path, index])


async def read_json_object(request: Request) -> dict:
    if not is_json_content_type(request.headers.get("content-type")):
        raise APIError(415, "Unsupported Content-Type: send the request body as "
                       "application/json (UTF-8).", code="unsupported_media_type")
    return parse_json_object(await request.body())


def reject_unsupported(model_cls: type[BaseModel], obj: dict) -> dict:
    """Known OpenAI parameters we do not implement: null is harmless, anything else is a 400."""
    names = [name for name in getattr(model_cls, "UNSUPPORTED", ()) if name in obj]
    if not names:
        return obj
    for name in names:
        if obj[name] is not None:
            raise APIError(400, f"The '{name}' parameter is not supported by this server.",
                           param=name, code="unsupported_parameter")
    return {key: value for key, value in obj.items() if key not in names}


def validate_model(model_cls: type[M], obj: dict, context: dict | None = None) -> M:
    obj = reject_unsupported(model_cls, obj)
    try:
        return model_cls.model_validate(obj, context=context)
    except ValidationError as exc:
        raise from_validation_error(exc) from None
    except RecursionError:
        raise APIError(400, "The request is nested too deeply.", code="invalid_value") from None


async def read_request(request: Request, model_cls: type[M], context: dict | None = None) -> M:
    return validate_model(model_cls, await read_json_object(request), context)
