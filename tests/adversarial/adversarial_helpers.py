"""Shared by the adversarial suite: the tight transport limits its server runs with, and the
canary every case ends with (a real generation through the official client still succeeds)."""
from __future__ import annotations

HEADER_TIMEOUT_S = 1.0
BODY_TIMEOUT_S = 1.5
MAX_CONNECTIONS_PER_CLIENT = 24


def canary(server) -> None:
    """The server still serves: a generation through the official client succeeds."""
    out = server.client(timeout=30).completions.create(model=server.model, prompt="Hello",
                                                       max_tokens=2)
    assert out.choices[0].finish_reason in ("length", "stop")
