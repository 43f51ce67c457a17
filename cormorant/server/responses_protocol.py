"""Request model of POST /v1/responses, and its input as chat messages and chat tools.

The Responses API is served through the chat pipeline: `instructions` is a system message,
`input` (a string, or message / function_call / function_call_output items) becomes chat
messages after the stored conversation of `previous_response_id`, and function tools
(`{"type": "function", "name", "parameters"}`, flat) become chat tools, and `text.format`
(`json_object`, or `json_schema` with `name` and `schema` flat) becomes chat's
`response_format`. Echoed reasoning items are dropped (templates drop earlier reasoning
too). Imports pydantic and server modules (protocol, tool_protocol).
"""
from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import (BaseModel, ConfigDict, Field, ValidationInfo, field_validator,
                      model_validator)

from cormorant.server.protocol import _STRICT, _bounded_list, limits
from cormorant.server.tool_protocol import FUNCTION_NAME, check_tools_bounds

_LOOSE = ConfigDict(strict=True, extra="ignore")  # echoed output items carry extra fields


class InputText(BaseModel):
    model_config = _LOOSE
    type: Literal["input_text", "output_text", "text"]
    text: str


class MessageItem(BaseModel):
    model_config = _LOOSE
    type: Literal["message"] = "message"
    role: Literal["user", "system", "developer", "assistant"]
    content: str | list[InputText]

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class FunctionCallItem(BaseModel):
    model_config = _LOOSE
    type: Literal["function_call"]
    call_id: str = Field(min_length=1, max_length=256)
    name: str = Field(min_length=1, max_length=256)
    arguments: str


class FunctionCallOutputItem(BaseModel):
    model_config = _LOOSE
    type: Literal["function_call_output"]
    call_id: str = Field(min_length=1, max_length=256)
    output: str


class ReasoningItem(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["reasoning"]


InputItem = MessageItem | FunctionCallItem | FunctionCallOutputItem | ReasoningItem


class TextFormat(BaseModel):
    """`text.format`: plain text, any JSON object, or JSON under a schema (enforced, strict or
    not, as chat's response_format)."""
    model_config = ConfigDict(strict=True, extra="forbid", populate_by_name=True)
    type: Literal["text", "json_object", "json_schema"]
    name: str | None = Field(None, min_length=1, max_length=64)
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None

    @model_validator(mode="after")
    def _schema_iff_json_schema(self) -> "TextFormat":
        named = self.name is not None and self.schema_ is not None
        if (self.type == "json_schema") != named or (not named and (
                self.name is not None or self.schema_ is not None)):
            raise ValueError("text.format needs 'name' and 'schema' for type 'json_schema' "
                             "and allows them only there")
        return self

    def chat_format(self) -> dict[str, Any]:
        if self.type != "json_schema":
            return {"type": self.type}
        inner = {"name": self.name, "description": self.description, "schema": self.schema_,
                 "strict": self.strict}
        return {"type": "json_schema",
                "json_schema": {k: v for k, v in inner.items() if v is not None}}

    def echo(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True)


class TextConfig(BaseModel):
    model_config = _STRICT
    format: TextFormat | None = None


class FunctionTool(BaseModel):
    model_config = _STRICT
    type: Literal["function"]
    name: str = Field(pattern=FUNCTION_NAME)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class NamedFunction(BaseModel):
    model_config = _STRICT
    type: Literal["function"]
    name: str = Field(pattern=FUNCTION_NAME)


class ResponsesRequest(BaseModel):
    model_config = _STRICT
    UNSUPPORTED: ClassVar[tuple[str, ...]] = ("background", "conversation", "include",
                                              "prompt", "reasoning", "max_tool_calls")

    model: str = Field(min_length=1, max_length=256)
    input: str | list[InputItem]
    instructions: str | None = None
    max_output_tokens: int | None = Field(None, ge=1, le=1 << 30)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    tools: list[FunctionTool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedFunction | None = None
    parallel_tool_calls: bool | None = None
    text: TextConfig | None = None
    previous_response_id: str | None = Field(None, min_length=1, max_length=256)
    store: bool = True
    stream: bool = False
    metadata: dict[str, str] | None = None
    user: str | None = Field(None, max_length=256)
    truncation: Literal["disabled"] | None = None

    @field_validator("input", mode="before")
    @classmethod
    def _input(cls, value: Any, info: ValidationInfo) -> Any:
        if value == "" or value == []:
            raise ValueError("input must not be empty")
        return _bounded_list(value, "input", limits(info).max_messages)

    @field_validator("tools", mode="before")
    @classmethod
    def _tools(cls, value: Any) -> Any:
        return check_tools_bounds(value)

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is not None and (len(value) > 16 or any(
                len(k) > 64 or len(v) > 512 for k, v in value.items())):
            raise ValueError("metadata takes at most 16 pairs, keys up to 64 and values up "
                             "to 512 characters")
        return value

    def chat_tools(self) -> list[dict] | None:
        if self.tools is None:
            return None
        return [{"type": "function", "function": t.model_dump(exclude={"type"},
                                                              exclude_none=True)}
                for t in self.tools]

    def chat_response_format(self) -> dict[str, Any] | None:
        fmt = self.text.format if self.text is not None else None
        return None if fmt is None or fmt.type == "text" else fmt.chat_format()

    def text_echo(self) -> dict[str, Any]:
        fmt = self.text.format if self.text is not None else None
        return {"format": fmt.echo() if fmt is not None else {"type": "text"}}

    def chat_tool_choice(self) -> Any:
        if isinstance(self.tool_choice, NamedFunction):
            return {"type": "function", "function": {"name": self.tool_choice.name}}
        return self.tool_choice

    def chat_messages(self) -> list[dict]:
        """This request's own turns (instructions first) as chat message dicts."""
        out: list[dict] = []
        if self.instructions:
            out.append({"role": "system", "content": self.instructions})
        items = [MessageItem(role="user", content=self.input)] if isinstance(self.input, str) \
            else self.input
        for item in items:
            if isinstance(item, MessageItem):
                out.append({"role": item.role, "content": item.text()})
            elif isinstance(item, FunctionCallItem):
                call = {"id": item.call_id, "type": "function",
                        "function": {"name": item.name, "arguments": item.arguments}}
                if out and out[-1]["role"] == "assistant" and out[-1].get("tool_calls"):
                    out[-1]["tool_calls"].append(call)
                else:
                    out.append({"role": "assistant", "content": None, "tool_calls": [call]})
            elif isinstance(item, FunctionCallOutputItem):
                out.append({"role": "tool", "tool_call_id": item.call_id,
                            "content": item.output})
        return out
