"""Small pieces every generation response shares: ids, usage, JSON bodies, finish reasons.

Response bodies are built as plain dicts and serialized once (the hot path of a stream emits
one per engine step; pydantic models here would only add latency). Their schema is fixed by
the OpenAI API and checked by the official client in the tests.
Imports starlette, frontend.outputs, server.errors and server.logprobs.
"""
from __future__ import annotations

import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

from starlette.responses import Response

from cormorant.frontend.outputs import RequestOutput
from cormorant.server.errors import APIError
from cormorant.server.logprobs import TokenText

CLIENT_GONE_STATUS = 499  # nginx's convention; nobody reads it, the access log does


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


@dataclass(kw_only=True)
class ResponseContext:
    """What every body and chunk of one generation response carries (routes extend it)."""
    id: str
    model: str
    fingerprint: str
    n: int
    include_usage: bool
    token_text: TokenText
    created: int = field(default_factory=lambda: int(time.time()))

    def envelope(self, object_name: str, choices: list[dict]) -> dict:
        return {"id": self.id, "object": object_name, "created": self.created,
                "model": self.model, "system_fingerprint": self.fingerprint, "choices": choices}


def json_response(body: dict, status: int = 200, headers: dict[str, str] | None = None
                  ) -> Response:
    return Response(json.dumps(body, ensure_ascii=False, separators=(",", ":")),
                    status_code=status, headers=headers, media_type="application/json")


def client_gone() -> Response:
    return Response(status_code=CLIENT_GONE_STATUS)


def usage(prompt_lens: Sequence[int], num_completion_tokens: int, num_cached_tokens: int = 0
          ) -> dict:
    prompt_tokens = sum(prompt_lens)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": num_completion_tokens,
            "total_tokens": prompt_tokens + num_completion_tokens,
            "prompt_tokens_details": {"cached_tokens": num_cached_tokens}}


def finals_usage(finals: Sequence[RequestOutput]) -> dict:
    return usage([len(out.prompt_token_ids) for out in finals],
                 sum(out.num_generated_tokens for out in finals),
                 sum(out.num_cached_tokens for out in finals))


def finish_reason(reason: str | None) -> str | None:
    """The engine's reasons are OpenAI's, except abort: that one never reaches a live client
    as a success (the client left, or the server is failing the request anyway)."""
    if reason == "abort":
        raise APIError(503, "The request was aborted by the engine.", code="request_aborted")
    return reason
