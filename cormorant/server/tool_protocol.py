"""Request models of tool calling (`tools`, `tool_choice`, assistant `tool_calls`) and their bounds.

Bounds are checked on the raw JSON before pydantic builds anything, so 10,000 tools or a
schema nested 10,000 deep cost one linear walk and a 400 that names the limit.
`chat_template_kwargs` passes a whitelist only (`enable_thinking`): templates are code, and
their other switches are not the client's to flip. Imports pydantic and server.errors.
"""
from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from cormorant.server.errors import APIError

_STRICT = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)
MAX_TOOLS = 128
MAX_TOOLS_JSON_CHARS = 256 * 1024
MAX_SCHEMA_DEPTH = 32
TEMPLATE_KWARGS = {"enable_thinking": bool}
FUNCTION_NAME = r"^[a-zA-Z0-9_.\-]{1,64}$"


class FunctionDef(BaseModel):
    model_config = _STRICT
    name: str = Field(pattern=FUNCTION_NAME)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(BaseModel):
    model_config = _STRICT
    type: Literal["function"]
    function: FunctionDef


class FunctionName(BaseModel):
    model_config = _STRICT
    name: str = Field(pattern=FUNCTION_NAME)


class NamedToolChoice(BaseModel):
    model_config = _STRICT
    type: Literal["function"]
    function: FunctionName


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class CalledFunction(BaseModel):
    model_config = _STRICT
    name: str = Field(min_length=1, max_length=256)
    arguments: str


class AssistantToolCall(BaseModel):
    model_config = _STRICT
    id: str = Field(min_length=1, max_length=256)
    type: Literal["function"] = "function"
    function: CalledFunction


def _limit(param: str, message: str) -> APIError:
    return APIError(400, message, param=param, code="invalid_value")


def json_depth(value: Any) -> int:
    """Nesting depth of a parsed JSON value, iteratively (no recursion to exhaust)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, depth)
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return deepest


def check_tools_bounds(value: Any) -> Any:
    if not isinstance(value, list):
        return value
    if len(value) > MAX_TOOLS:
        raise _limit("tools", f"tools has {len(value)} items; at most {MAX_TOOLS} are allowed")
    size = len(json.dumps(value, ensure_ascii=False))
    if size > MAX_TOOLS_JSON_CHARS:
        raise _limit("tools", f"tools is {size} characters of JSON; at most "
                     f"{MAX_TOOLS_JSON_CHARS} are allowed")
    for i, tool in enumerate(value):
        # tool -> function -> parameters: the schema starts 3 levels down.
        depth = json_depth(tool) - 2
        if depth > MAX_SCHEMA_DEPTH:
            raise _limit(f"tools[{i}]", f"the parameters schema of tools[{i}] is nested "
                         f"{depth} levels deep; at most {MAX_SCHEMA_DEPTH} are allowed")
    return value


def check_template_kwargs(value: Any) -> Any:
    if not isinstance(value, dict):
        return value
    for key, item in value.items():
        expected = TEMPLATE_KWARGS.get(key)
        if expected is None:
            raise _limit("chat_template_kwargs", f"chat_template_kwargs key '{str(key)[:64]}'"
                         f" is not allowed; allowed: {', '.join(TEMPLATE_KWARGS)}")
        if not isinstance(item, expected):
            raise _limit("chat_template_kwargs", f"chat_template_kwargs.{key} must be a "
                         f"{expected.__name__}")
    return value


# The request fields, with their bounds checked before pydantic parses them (a 400 naming the
# limit, before a 10,000-tool list is turned into models).
ToolList = Annotated[list[Tool] | None, BeforeValidator(check_tools_bounds)]
TemplateKwargs = Annotated[dict[str, Any] | None, BeforeValidator(check_template_kwargs)]


def check_tool_choice(tools: list[Tool] | None, choice: ToolChoice | None) -> None:
    if choice is None or choice in ("none", "auto"):
        return
    if not tools:
        raise _limit("tool_choice", "tool_choice other than 'none' or 'auto' needs tools")
    if isinstance(choice, NamedToolChoice):
        names = {tool.function.name for tool in tools}
        if choice.function.name not in names:
            raise _limit("tool_choice", f"tool_choice names function "
                         f"'{choice.function.name}', which is not in tools")
