"""A Responses API output, built from chat deltas: output items and the streaming events.

`ResponseBuilder.add(delta)` takes server.chat_output's deltas (reasoning_content, content,
tool_calls) and returns the Responses events they mean: an item opens
(`response.output_item.added`, plus `response.content_part.added` for text), grows
(`response.output_text.delta`, `response.reasoning_text.delta`,
`response.function_call_arguments.delta`) and closes (`...done` events, then
`response.output_item.done`) when the next kind of output begins or the response ends. The
non-streamed body is the same builder run over the whole output, so both agree.
Imports only the standard library.
"""
from __future__ import annotations

import uuid
from typing import Any


def new_id(prefix: str) -> str:
    """OpenAI's Responses ids: resp_..., msg_..., fc_..., rs_..."""
    return f"{prefix}_{uuid.uuid4().hex}"


def _text_part(kind: str, text: str) -> dict:
    if kind == "reasoning":
        return {"type": "reasoning_text", "text": text}
    return {"type": "output_text", "text": text, "annotations": []}


class ResponseBuilder:
    def __init__(self) -> None:
        self.output: list[dict] = []
        self._open: dict | None = None  # the item being written
        self._kind = ""  # "reasoning" | "message" | "function_call"

    def add(self, delta: dict) -> list[dict]:
        if delta.get("reasoning_content"):
            return self._text("reasoning", delta["reasoning_content"])
        if delta.get("content"):
            return self._text("message", delta["content"])
        events: list[dict] = []
        for call in delta.get("tool_calls") or []:
            if call.get("id"):  # a new call: its header
                events += self.close()
                item = {"type": "function_call", "id": new_id("fc"), "call_id": call["id"],
                        "name": call["function"]["name"], "arguments": "",
                        "status": "in_progress"}
                events += self._begin("function_call", item)
            arguments = call["function"].get("arguments") or ""
            if arguments and self._open is not None:
                self._open["arguments"] += arguments
                events.append({"type": "response.function_call_arguments.delta",
                               "item_id": self._open["id"], "output_index": self._index,
                               "delta": arguments})
        return events

    @property
    def _index(self) -> int:
        return len(self.output) - 1

    def _begin(self, kind: str, item: dict) -> list[dict]:
        self._open, self._kind = item, kind
        self.output.append(item)
        events = [{"type": "response.output_item.added", "output_index": self._index,
                   "item": _copy(item)}]
        if kind in ("message", "reasoning"):
            events.append({"type": "response.content_part.added", "item_id": item["id"],
                           "output_index": self._index, "content_index": 0,
                           "part": _text_part(kind, "")})
        return events

    def _text(self, kind: str, text: str) -> list[dict]:
        events: list[dict] = []
        if self._kind != kind:
            events += self.close()
            if kind == "message":
                item = {"type": "message", "id": new_id("msg"), "status": "in_progress",
                        "role": "assistant", "content": []}
            else:
                item = {"type": "reasoning", "id": new_id("rs"), "summary": [], "content": []}
            events += self._begin(kind, item)
            self._open["text"] = ""  # type: ignore[index]
        assert self._open is not None
        self._open["text"] += text
        name = "response.output_text.delta" if kind == "message" else \
            "response.reasoning_text.delta"
        events.append({"type": name, "item_id": self._open["id"], "output_index": self._index,
                       "content_index": 0, "delta": text})
        return events

    def close(self) -> list[dict]:
        """Close the open item (if any): its done events."""
        item, kind = self._open, self._kind
        self._open, self._kind = None, ""
        if item is None:
            return []
        base = {"item_id": item["id"], "output_index": self.output.index(item)}
        events: list[dict] = []
        if kind == "function_call":
            events.append({"type": "response.function_call_arguments.done", **base,
                           "arguments": item["arguments"]})
            item["status"] = "completed"
        else:
            text = item.pop("text")
            part = _text_part(kind, text)
            name = "response.output_text.done" if kind == "message" else \
                "response.reasoning_text.done"
            events.append({"type": name, **base, "content_index": 0, "text": text})
            events.append({"type": "response.content_part.done", **base, "content_index": 0,
                           "part": part})
            item["content"] = [part]
            if kind == "message":
                item["status"] = "completed"
        events.append({"type": "response.output_item.done",
                       "output_index": base["output_index"], "item": _copy(item)})
        return events

    def assistant_messages(self) -> list[dict]:
        """The output as chat messages, for the stored conversation."""
        text = "".join(p["text"] for item in self.output if item["type"] == "message"
                       for p in item["content"])
        calls = [{"id": item["call_id"], "type": "function",
                  "function": {"name": item["name"], "arguments": item["arguments"]}}
                 for item in self.output if item["type"] == "function_call"]
        message: dict[str, Any] = {"role": "assistant", "content": text or None}
        if calls:
            message["tool_calls"] = calls
        elif not text:
            message["content"] = ""
        return [message]


def _copy(item: dict) -> dict:
    return {k: (list(v) if isinstance(v, list) else v) for k, v in item.items() if k != "text"}
