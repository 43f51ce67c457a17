"""Tool-call parsers, one module per model family's format, and the choice among them.

`parser_for_template(chat_template)` picks the format a model's own chat template teaches:
Mistral's `[TOOL_CALLS]`, Llama 3.1+'s JSON (`"parameters"`, `<|python_tag|>`), or Hermes'
`<tool_call>` tags (Qwen2.5, Qwen3, SmolLM2, and the default). `template_knows_tools` says
whether the template renders `tools` at all (SmolLM2's does not: the server then writes the
tools into the system prompt itself, in the Hermes format the model was tuned on).
"""
from __future__ import annotations

from cormorant.text.tool_parsers.base import (ArgsDelta, CallHeader, ParsedOutput, ToolCall,
                                              ToolParser, new_call_id)
from cormorant.text.tool_parsers.forced import NamedParser, RequiredParser
from cormorant.text.tool_parsers.hermes import HermesParser
from cormorant.text.tool_parsers.leading_json import Llama3JsonParser, MistralParser
from cormorant.text.tool_parsers.streaming import StreamingToolParser

PARSERS: dict[str, type] = {"hermes": HermesParser, "llama3_json": Llama3JsonParser,
                            "mistral": MistralParser}

__all__ = ["PARSERS", "ArgsDelta", "CallHeader", "HermesParser", "Llama3JsonParser",
           "MistralParser", "NamedParser", "ParsedOutput", "RequiredParser",
           "StreamingToolParser", "ToolCall", "ToolParser", "new_call_id", "parser_for_template",
           "template_knows_tools"]


def parser_for_template(chat_template: str | None) -> ToolParser:
    template = chat_template or ""
    if "[TOOL_CALLS]" in template:
        return MistralParser()
    if "<|python_tag|>" in template or ("ipython" in template and "parameters" in template):
        return Llama3JsonParser()
    return HermesParser()


def template_knows_tools(chat_template: str | None) -> bool:
    return bool(chat_template) and "tools" in chat_template  # type: ignore[operator]
