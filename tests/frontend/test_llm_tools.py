"""LLM.chat with tools offline: tools and tool turns rendered as the server renders them (the
tiny model's ChatML template renders no tools, so they are written into the conversation)."""
from __future__ import annotations

import json

from cormorant import LLM, SamplingParams

TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}}}}]
ROUND_TRIP = [
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
]


def test_chat_with_tools(tiny_llama):
    llm = LLM(tiny_llama, block_size=8, num_kv_blocks=256)
    params = SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True)
    out = llm.chat(ROUND_TRIP, params, tools=TOOLS)[0]
    prompt = llm.tokenizer.decode(out.prompt_token_ids, skip_special_tokens=False)
    assert json.dumps(TOOLS[0]) in prompt
    assert ('<|im_start|>assistant\n<tool_call>[{"name": "get_weather", "arguments": '
            '{"city": "Paris"}}]</tool_call><|im_end|>') in prompt
    assert "<|im_start|>user\n<tool_response>\n18C\n</tool_response><|im_end|>" in prompt
    assert len(out.outputs[0].token_ids) == 4
    plain = llm.chat(ROUND_TRIP[:1], params)[0]
    assert "<tools>" not in llm.tokenizer.decode(plain.prompt_token_ids,
                                                 skip_special_tokens=False)
