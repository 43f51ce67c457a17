"""A chat choice's text as OpenAI's message: content, `tool_calls` and `reasoning_content`.

`final_message` shapes a whole output; `ChoiceDeltas` does the same for a stream, delta by
delta: reasoning deltas, content deltas, and per tool call a first delta with its index, id,
type and name (arguments "") followed by its arguments (Hermes: in pieces as they are
generated). Joined, the deltas give the final message's fields. With `plan.single_call`
(`parallel_tool_calls: false`) calls after the first are dropped, in both. With no tools
and no reasoning both pass the text through unchanged.
Imports server.chat_tools and text's parsers.
"""
from __future__ import annotations

from cormorant.server.chat_tools import ChatPlan
from cormorant.text.reasoning import StreamingReasoningParser, split_reasoning
from cormorant.text.tool_parsers import (ArgsDelta, CallHeader, StreamingToolParser, ToolCall,
                                         new_call_id)


def call_dict(call: ToolCall, short_ids: bool) -> dict:
    return {"id": new_call_id(short_ids), "type": "function",
            "function": {"name": call.name, "arguments": call.arguments}}


def tool_finish_reason(reason: str | None, num_calls: int) -> str | None:
    """OpenAI's "tool_calls" when the model ended its turn with calls."""
    return "tool_calls" if reason == "stop" and num_calls else reason


def final_message(plan: ChatPlan, text: str, opened: bool) -> dict:
    reasoning = None
    if plan.reasoning:
        reasoning, text = split_reasoning(text, opened)
    message: dict = {"role": "assistant", "content": text, "refusal": None}
    if plan.new_tool_parser is not None:
        parsed = plan.new_tool_parser().parse(text)
        message["content"] = parsed.content
        calls = parsed.calls[:1] if plan.single_call else parsed.calls
        if calls:
            message["tool_calls"] = [call_dict(c, plan.short_ids) for c in calls]
    if reasoning is not None:
        message["reasoning_content"] = reasoning
    return message


class ChoiceDeltas:
    """One choice's stream: feed(text_delta) and finish() return delta dicts."""

    def __init__(self, plan: ChatPlan, opened: bool) -> None:
        self._short_ids = plan.short_ids
        self._reasoning = StreamingReasoningParser(opened) if plan.reasoning else None
        self._tools = (StreamingToolParser(plan.new_tool_parser())
                       if plan.new_tool_parser is not None else None)
        self._max_calls = 1 if plan.single_call else None
        self._dropping = False  # the current call is past max_calls: its pieces are dropped
        self.num_calls = 0

    def feed(self, text: str) -> list[dict]:
        if self._reasoning is None:
            return self._content(text)
        reasoning, content = self._reasoning.feed(text)
        out = [{"reasoning_content": reasoning}] if reasoning else []
        return out + self._content(content)

    def finish(self) -> list[dict]:
        out: list[dict] = []
        if self._reasoning is not None:
            reasoning, content = self._reasoning.finish()
            out = [{"reasoning_content": reasoning}] if reasoning else []
            out += self._content(content)
        if self._tools is not None:
            out += self._pieces(self._tools.finish())
        return out

    def _content(self, text: str) -> list[dict]:
        if self._tools is None:
            return [{"content": text}] if text else []
        return self._pieces(self._tools.feed(text)) if text else []

    def _pieces(self, pieces: list[ToolCall | CallHeader | ArgsDelta | str]) -> list[dict]:
        out: list[dict] = []
        for piece in pieces:
            if isinstance(piece, (ToolCall, CallHeader)):
                out += self._begin_call(piece.name)
                if isinstance(piece, ToolCall):
                    out += self._arguments(piece.arguments)
            elif isinstance(piece, ArgsDelta):
                out += self._arguments(piece.text)
            elif piece and not (self.num_calls and piece.isspace()):
                out.append({"content": piece})
        return out

    def _begin_call(self, name: str) -> list[dict]:
        self._dropping = self._max_calls is not None and self.num_calls >= self._max_calls
        if self._dropping:
            return []
        self.num_calls += 1
        return [{"tool_calls": [{"index": self.num_calls - 1, "id": new_call_id(self._short_ids),
                                 "type": "function",
                                 "function": {"name": name, "arguments": ""}}]}]

    def _arguments(self, text: str) -> list[dict]:
        if self._dropping or not text or not self.num_calls:
            return []
        return [{"tool_calls": [{"index": self.num_calls - 1,
                                 "function": {"arguments": text}}]}]
