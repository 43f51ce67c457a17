"""Tools and tool turns for chat templates that do not render them (SmolLM2, plain ChatML).

Templates that know tools (Qwen, Llama 3.1+, Mistral) get `tools=` and messages with
`tool_calls` / `tool_call_id` as transformers passes them. For the others the conversation
is rewritten in the Hermes format those models were tuned on: the tools in a system prompt
inside `<tools>`, each earlier call as `<tool_call>` text, each result as a user turn inside
`<tool_response>`. `template_inputs` decides between the two for the server and `LLM.chat`.
Imports only the standard library.
"""
from __future__ import annotations

import json

TOOLS_SYSTEM = (
    "You can call these functions:\n<tools>\n{tools}\n</tools>\n"
    "To call them, reply only with a JSON list of calls in <tool_call></tool_call> tags:\n"
    "<tool_call>[{{\"name\": <function-name>, \"arguments\": <args-json-object>}}]"
    "</tool_call>\nIf no function fits, answer in plain text.")


def call_json(call: dict) -> str:
    function = call["function"]
    return json.dumps({"name": function["name"], "arguments": function["arguments"]},
                      ensure_ascii=False)


def inline_tools(messages: list[dict], tools: list[dict] | None) -> list[dict]:
    """The conversation with tools and tool turns written as text (see the module doc)."""
    out: list[dict] = []
    if tools:
        system = TOOLS_SYSTEM.format(tools="\n".join(json.dumps(t, ensure_ascii=False)
                                                     for t in tools))
        if messages and messages[0]["role"] == "system":
            system = messages[0]["content"] + "\n\n" + system
            messages = messages[1:]
        out.append({"role": "system", "content": system})
    for message in messages:
        if message.get("tool_calls"):
            calls = ", ".join(call_json(c) for c in message["tool_calls"])
            text = (message["content"] + "\n" if message["content"] else "")
            out.append({"role": "assistant", "content": f"{text}<tool_call>[{calls}]</tool_call>"})
        elif message["role"] == "tool":
            response = f"<tool_response>\n{message['content']}\n</tool_response>"
            if out and out[-1].get("is_tool_turn"):
                out[-1]["content"] += "\n" + response
            else:
                out.append({"role": "user", "content": response, "is_tool_turn": True})
        else:
            out.append(message)
    return [{k: v for k, v in m.items() if k != "is_tool_turn"} for m in out]


def template_inputs(messages: list[dict], tools: list[dict] | None, chat_template: str | None,
                    template_kwargs: dict | None = None) -> tuple[list[dict], dict]:
    """Messages and keyword arguments for `apply_chat_template`: `tools=` for templates that
    render tools, the conversation rewritten (inline_tools) for those that do not."""
    kwargs = dict(template_kwargs or {})
    messages = [_with_object_arguments(m) if m.get("tool_calls") else m for m in messages]
    if chat_template and "tools" in chat_template:
        if tools:
            kwargs["tools"] = tools
    elif tools or any(m.get("tool_calls") or m.get("role") == "tool" for m in messages):
        messages = inline_tools(messages, tools)
    return messages, kwargs


def _with_object_arguments(message: dict) -> dict:
    """Calls' arguments as templates want them: the object (they `tojson` it) when the JSON
    text is one, else the text."""
    calls = []
    for call in message["tool_calls"]:
        arguments = call["function"]["arguments"]
        if isinstance(arguments, str):
            try:
                value = json.loads(arguments)
            except ValueError:
                value = None
            if isinstance(value, dict):
                arguments = value
        calls.append({**call, "function": {**call["function"], "arguments": arguments}})
    return {**message, "tool_calls": calls}
