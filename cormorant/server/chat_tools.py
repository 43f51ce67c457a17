"""What a chat request's tools and reasoning settings mean for one model: the ChatPlan.

From `tools`, `tool_choice`, `parallel_tool_calls` and `chat_template_kwargs`, and the served
model's chat template: what the template gets, which tool-call parser reads the output, the
JSON-schema constraint a forced choice needs, and whether `<think>` output is reasoning.
`tool_choice: "none"` leaves the tools out of the prompt (vLLM's default) and parses nothing;
`"required"` asks for a JSON array of `{"name", "arguments"}` calls (one at most without
`parallel_tool_calls`), a named function for its arguments object alone; both are enforced
by the engine's structured outputs (`SamplingParams.structured_outputs`). Under `"auto"`,
`parallel_tool_calls: false` keeps the first parsed call only.
Imports sampling_params, server modules (errors, prompts, tool_protocol) and text's parsers
and grammar check.
"""
from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cormorant.sampling_params import SamplingParams, StructuredOutputs
from cormorant.server.errors import APIError
from cormorant.server.prompts import ChatInputs
from cormorant.server.tool_protocol import NamedToolChoice, Tool, ToolChoice
from cormorant.text.grammar import GrammarError, GrammarLimits, validate
from cormorant.text.reasoning import OPEN as THINK_OPEN
from cormorant.text.reasoning import reasoning_parser_for_template
from cormorant.text.tool_parsers import (NamedParser, RequiredParser, ToolParser,
                                         parser_for_template)

_ANY_OBJECT = {"type": "object"}
GRAMMAR_LIMITS = GrammarLimits()


@dataclass(frozen=True)
class ChatPlan:
    inputs: ChatInputs = field(default_factory=ChatInputs)
    new_tool_parser: Callable[[], ToolParser] | None = None  # None: calls are not parsed
    structured: StructuredOutputs | None = None
    reasoning: bool = False
    short_ids: bool = False  # Mistral's 9-character call ids
    single_call: bool = False  # parallel_tool_calls false: only the first call is kept


def _parameters(tool: Tool) -> dict[str, Any]:
    """The arguments' schema for the constraint: an object schema that lists its properties
    and says nothing of others is closed (additionalProperties false), so the model can only
    write the declared arguments and must end the object (a subset of what the schema
    allows, and what OpenAI's strict mode does)."""
    schema = tool.function.parameters
    if schema is None:
        return _ANY_OBJECT
    if "properties" in schema and "additionalProperties" not in schema:
        return {**schema, "additionalProperties": False}
    return schema


def required_schema(tools: list[Tool], parallel: bool) -> dict[str, Any]:
    """A JSON array of calls, each one of the tools with arguments in its schema."""
    calls = [{"type": "object",
              "properties": {"name": {"const": t.function.name}, "arguments": _parameters(t)},
              "required": ["name", "arguments"], "additionalProperties": False}
             for t in tools]
    schema: dict[str, Any] = {"type": "array", "minItems": 1,
                              "items": calls[0] if len(calls) == 1 else {"anyOf": calls}}
    if not parallel:
        schema["maxItems"] = 1
    return schema


def wants_reasoning(setting: str, chat_template: str | None) -> bool:
    if setting == "none":
        return False
    return setting == "qwen3" or reasoning_parser_for_template(chat_template) is not None


def tool_constraint(tools: list[Tool] | None, choice: ToolChoice | None,
                    parallel: bool | None) -> StructuredOutputs | None:
    """The JSON-schema constraint a forced tool choice needs (None: not forced)."""
    if not tools or choice in (None, "none", "auto"):
        return None
    if isinstance(choice, NamedToolChoice):
        tool = next(t for t in tools if t.function.name == choice.function.name)
        return StructuredOutputs(json=json.dumps(_parameters(tool)))
    return StructuredOutputs(json=json.dumps(required_schema(tools, parallel is not False)))


async def check_tool_constraint(tools: list[Tool] | None, choice: ToolChoice | None,
                                parallel: bool | None) -> None:
    """Compile-check a forced choice's constraint off the event loop, within the grammar
    limits' timeout (as response_format's are): a 400 naming the limit, never an engine
    error later."""
    spec = tool_constraint(tools, choice, parallel)
    if spec is None:
        return
    try:
        await asyncio.wait_for(asyncio.to_thread(validate, spec, GRAMMAR_LIMITS),
                               GRAMMAR_LIMITS.compile_timeout_s)
    except TimeoutError:
        raise APIError(400, "compiling the tool_choice constraint took longer than the limit "
                       f"compile_timeout_s={GRAMMAR_LIMITS.compile_timeout_s}",
                       param="tool_choice", code="compile_timeout_s") from None
    except GrammarError as e:
        raise APIError(400, f"tool_choice: the tools' parameter schemas cannot be enforced: "
                       f"{e}", param="tool_choice",
                       code="invalid_value" if e.limit == "grammar" else e.limit) from None


def chat_plan(tools: list[Tool] | None, choice: ToolChoice | None, parallel: bool | None,
              template_kwargs: dict | None, chat_template: str | None,
              reasoning_setting: str) -> ChatPlan:
    reasoning = wants_reasoning(reasoning_setting, chat_template)
    kwargs = dict(template_kwargs or {})
    if not tools or choice == "none":
        return ChatPlan(ChatInputs(None, kwargs), reasoning=reasoning)
    family = parser_for_template(chat_template)
    short = family.short_ids
    tool_dicts = [t.model_dump(exclude_none=True) for t in tools]
    inputs = ChatInputs(tool_dicts, kwargs)
    forced = tool_constraint(tools, choice, parallel)
    if isinstance(choice, NamedToolChoice):
        name = choice.function.name
        return ChatPlan(inputs, lambda: NamedParser(name, short), forced, reasoning, short)
    if choice == "required":
        return ChatPlan(inputs, lambda: RequiredParser(short), forced, reasoning, short)
    return ChatPlan(inputs, lambda: parser_for_template(chat_template), None, reasoning,
                    short, single_call=parallel is False)


def prompt_opens_thinking(prompt_token_ids: list[int], decode: Callable[[list[int]], str]
                          ) -> bool:
    """Whether the rendered prompt ends inside a think block (the output then starts as
    reasoning): its last few tokens end with `<think>`."""
    tail = decode(prompt_token_ids[-8:])
    return tail.rstrip().endswith(THINK_OPEN)


def constrain(params: SamplingParams, plan: ChatPlan) -> None:
    """Put a forced tool choice's constraint on the request (one constraint per request)."""
    if plan.structured is None:
        return
    if params.structured_outputs is not None:
        raise APIError(400, "tool_choice 'required' or a named function cannot be combined "
                       "with another output constraint (response_format).",
                       param="tool_choice", code="invalid_value")
    params.structured_outputs = plan.structured
