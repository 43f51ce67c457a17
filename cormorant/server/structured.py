"""Constraint fields of a request (response_format, structured_outputs) to StructuredOutputs.

OpenAI's `response_format` (`json_object`, `json_schema` with or without `strict`: the schema
is enforced either way) and vLLM's `structured_outputs` extra (`json | json_object | regex |
choice | grammar`) become one `StructuredOutputs`; asking for both is a 400. The constraint is
then checked against its bounds and by the grammar engine (text.grammar.validate) in a worker
thread, with a timeout, so neither a huge nor a pathological constraint holds the event loop:
every breach is a 400 naming the limit, before the request reaches an engine.

Imports text.grammar, sampling_params and server modules (protocol, errors).
"""
from __future__ import annotations

import asyncio
import json

from cormorant.sampling_params import StructuredOutputs
from cormorant.server.errors import APIError
from cormorant.server.protocol import SamplingFields, StructuredOutputsField
from cormorant.text.grammar import GrammarError, GrammarLimits, validate

LIMITS = GrammarLimits()


def structured_spec(req: SamplingFields) -> tuple[StructuredOutputs, str] | None:
    """(the request's constraint, the field it came from), or None when unconstrained."""
    fmt = req.response_format
    has_format = fmt is not None and fmt.type != "text"
    if has_format and req.structured_outputs is not None:
        raise APIError(400, "response_format and structured_outputs cannot be combined; "
                       "use one.", param="structured_outputs", code="invalid_value")
    if req.structured_outputs is not None:
        return _from_extra(req.structured_outputs), "structured_outputs"
    if not has_format:
        return None
    if fmt.type == "json_object":
        return StructuredOutputs(json_object=True), "response_format"
    schema = fmt.json_schema.schema_
    return StructuredOutputs(json=json.dumps(schema if schema is not None else {})), \
        "response_format"


def _from_extra(field: StructuredOutputsField) -> StructuredOutputs:
    schema = field.json_
    spec = StructuredOutputs(
        json=schema if schema is None or isinstance(schema, str) else json.dumps(schema),
        json_object=bool(field.json_object), regex=field.regex, choice=field.choice,
        grammar=field.grammar, disable_any_whitespace=field.disable_any_whitespace)
    try:
        spec.kind()
    except ValueError as e:
        raise APIError(400, str(e), param="structured_outputs", code="invalid_value") from None
    return spec


async def checked_structured_outputs(req: SamplingFields, limits: GrammarLimits = LIMITS
                                     ) -> StructuredOutputs | None:
    """The request's constraint, validated off the event loop within the compile timeout."""
    found = structured_spec(req)
    if found is None:
        return None
    spec, param = found
    try:
        await asyncio.wait_for(asyncio.to_thread(validate, spec, limits),
                               limits.compile_timeout_s)
    except TimeoutError:
        raise APIError(400, "compiling the constraint took longer than the limit "
                       f"compile_timeout_s={limits.compile_timeout_s}", param=param,
                       code="compile_timeout_s") from None
    except GrammarError as e:
        code = "invalid_value" if e.limit == "grammar" else e.limit
        raise APIError(400, str(e), param=param, code=code) from None
    return spec
