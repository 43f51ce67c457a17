"""POST /v1/responses: OpenAI's Responses API over the chat pipeline, streamed as its events.

The request becomes a chat request (server.responses_protocol) after the conversation stored
for `previous_response_id` (this key's only; 404 otherwise), runs as one engine job, and
its output becomes Responses output items (server.responses_events): reasoning, a message,
function calls. Streamed: `response.created`, `response.in_progress`, the item events, then
`response.completed` (or `response.incomplete` at max_output_tokens), each as
`event: <type>` + `data: {json}` with a sequence_number. With `store` (the default), the
conversation and its output are saved under the response id for a later turn. `text.format`
constrains the output as chat's response_format does (server.structured).
Imports server modules and the gateway's principal and response store.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, field

from starlette.requests import Request
from starlette.responses import Response

from cormorant.frontend.outputs import RequestOutput
from cormorant.sampling_params import StructuredOutputs
from cormorant.gateway.auth.keys import Principal
from cormorant.gateway.auth.middleware import get_principal
from cormorant.server.body import read_request, validate_model
from cormorant.server.chat_output import ChoiceDeltas
from cormorant.server.chat_tools import check_tool_constraint
from cormorant.server.dispatch import Started, collect_finals, start_generation
from cormorant.server.errors import APIError
from cormorant.server.protocol import ChatCompletionRequest
from cormorant.server.responses import client_gone, finish_reason, json_response
from cormorant.server.responses_events import ResponseBuilder, new_id
from cormorant.server.responses_protocol import ResponsesRequest
from cormorant.server.serving_chat import chat_preparer
from cormorant.server.structured import checked_structured_outputs
from cormorant.server.sse import SSEResponse
from cormorant.server.state import ServerState

logger = logging.getLogger("cormorant.server")


@dataclass
class _Turn:
    req: ResponsesRequest
    key_id: str
    messages: list[dict]  # history + this turn, without instructions (they do not carry over)
    id: str = field(default_factory=lambda: new_id("resp"))
    model: str = ""
    created: int = 0

    def body(self, status: str, builder: ResponseBuilder, out: RequestOutput | None) -> dict:
        req = self.req
        usage = None
        if out is not None:
            num_in, num_out = len(out.prompt_token_ids), out.num_generated_tokens
            usage = {"input_tokens": num_in,
                     "input_tokens_details": {"cached_tokens": out.num_cached_tokens},
                     "output_tokens": num_out, "output_tokens_details": {"reasoning_tokens": 0},
                     "total_tokens": num_in + num_out}
        return {"id": self.id, "object": "response", "created_at": self.created,
                "status": status, "error": None,
                "incomplete_details": {"reason": "max_output_tokens"}
                if status == "incomplete" else None,
                "instructions": req.instructions, "max_output_tokens": req.max_output_tokens,
                "model": self.model, "output": builder.output,
                "parallel_tool_calls": req.parallel_tool_calls is not False,
                "previous_response_id": req.previous_response_id,
                "temperature": 1.0 if req.temperature is None else req.temperature,
                "top_p": 1.0 if req.top_p is None else req.top_p,
                "tool_choice": _dump(req.tool_choice) or "auto",
                "tools": [t.model_dump() for t in req.tools or []], "store": req.store,
                "metadata": req.metadata or {}, "text": req.text_echo(),
                "truncation": "disabled", "usage": usage, "user": req.user}


def _dump(value: object) -> object:
    return value.model_dump() if hasattr(value, "model_dump") else value  # type: ignore


async def create_response(request: Request, state: ServerState) -> Response:
    req = await read_request(request, ResponsesRequest, state.validation_context)
    principal = get_principal(request) or Principal.anonymous()
    history: list[dict] = []
    if req.previous_response_id is not None:
        found = await asyncio.to_thread(state.responses.get, req.previous_response_id,
                                        principal.key_id)
        if found is None:
            raise APIError(404, f"Previous response with id '{req.previous_response_id}' "
                           "not found.", param="previous_response_id", code="not_found")
        history = found
    own = req.chat_messages()
    instructions = own[:1] if req.instructions else []
    turn = _Turn(req, principal.key_id, history + own[len(instructions):])
    chat_body = {"model": req.model, "messages": instructions + turn.messages,
                 "tools": req.chat_tools(), "tool_choice": req.chat_tool_choice(),
                 "parallel_tool_calls": req.parallel_tool_calls,
                 "response_format": req.chat_response_format(),
                 "max_completion_tokens": req.max_output_tokens,
                 "temperature": req.temperature, "top_p": req.top_p, "user": req.user}
    chat_req = validate_model(ChatCompletionRequest,
                              {k: v for k, v in chat_body.items() if v is not None},
                              state.validation_context)
    await check_tool_constraint(chat_req.tools, chat_req.tool_choice,
                                chat_req.parallel_tool_calls)
    structured = await _text_format_constraint(chat_req)
    started = await start_generation(request, state, req.model, req.user, "responses",
                                     chat_preparer(chat_req, state, structured, "resp"))
    turn.model, turn.created = started.served.model_id, int(time.time())
    if req.stream:
        assert started.stream is not None
        return SSEResponse(_sse(turn, started, state), headers=started.headers,
                           on_close=started.stream.aclose)
    return await _complete(request, turn, started, state)


async def _text_format_constraint(chat_req: ChatCompletionRequest
                                  ) -> StructuredOutputs | None:
    """`text.format`'s constraint (chat's response_format), its errors naming text.format."""
    try:
        return await checked_structured_outputs(chat_req)
    except APIError as e:
        if e.param == "response_format":
            e.param = "text.format"
        raise


def _status(out: RequestOutput) -> str:
    return "incomplete" if finish_reason(out.outputs[0].finish_reason) == "length" \
        else "completed"


async def _save(state: ServerState, turn: _Turn, builder: ResponseBuilder) -> None:
    if turn.req.store:
        await asyncio.to_thread(state.responses.put, turn.id, turn.key_id,
                                turn.messages + builder.assistant_messages())


async def _complete(request: Request, turn: _Turn, started: Started, state: ServerState
                    ) -> Response:
    finals = await collect_finals(request, started)
    if finals is None:
        return client_gone()
    out = finals[0]
    plan, opened = started.prepared.extra
    deltas, builder = ChoiceDeltas(plan, opened), ResponseBuilder()
    for delta in [*deltas.feed(out.outputs[0].text), *deltas.finish()]:
        builder.add(delta)
    builder.close()
    body = turn.body(_status(out), builder, out)
    await _save(state, turn, builder)
    return json_response(body, headers=started.headers)


async def _sse(turn: _Turn, started: Started, state: ServerState) -> AsyncIterator[bytes]:
    seq = 0

    def frame(event: dict) -> bytes:
        nonlocal seq
        event["sequence_number"] = seq
        seq += 1
        data = json.dumps(event, ensure_ascii=False, separators=(",", ":"))
        return f"event: {event['type']}\ndata: {data}\n\n".encode()

    plan, opened = started.prepared.extra
    deltas, builder = ChoiceDeltas(plan, opened), ResponseBuilder()
    yield frame({"type": "response.created", "response": turn.body("in_progress", builder,
                                                                  None)})
    yield frame({"type": "response.in_progress",
                 "response": turn.body("in_progress", builder, None)})
    last: RequestOutput | None = None
    assert started.stream is not None
    try:
        async with aclosing(started.stream.outputs()) as outputs:
            async for _, out in outputs:
                o = out.outputs[0]
                found = deltas.feed(o.text_delta) if o.text_delta else []
                if o.finish_reason is not None:
                    found += deltas.finish()
                events = [event for delta in found for event in builder.add(delta)]
                if o.finish_reason is not None:
                    events += builder.close()
                if events:
                    yield b"".join(frame(e) for e in events)
                last = out
        assert last is not None
        status = _status(last)
    except APIError as err:
        yield frame({"type": "error", "code": err.code, "message": err.message,
                     "param": err.param})
        return
    await _save(state, turn, builder)
    yield frame({"type": f"response.{status}", "response": turn.body(status, builder, last)})
