"""ServerConfig: every knob of the HTTP layer in one frozen dataclass.

Limits live here so that each one is configurable and documented in one place; the request
validators, the middleware and the admission controller all read them from this object.
Imports nothing from cormorant but the package version (it is importable from anywhere).
"""
from __future__ import annotations

from dataclasses import dataclass

MiB = 1024 * 1024


@dataclass(frozen=True)
class ServerConfig:
    # --- identity -----------------------------------------------------------------------
    served_model_name: str | None = None  # None: the engine's own model name
    model_version: str = ""  # short digest of the model files; part of system_fingerprint

    # --- binding and auth -------------------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    insecure: bool = False  # allow a non-loopback bind without an API key

    # --- transport bounds (checked before the body is parsed) --------------------------------
    max_body_bytes: int = 4 * MiB
    max_header_bytes: int = 16 * 1024  # all header names and values together
    max_header_count: int = 100

    # --- request field bounds ---------------------------------------------------------------
    max_n: int = 16
    max_prompts: int = 64  # prompts in one /v1/completions list
    max_choices: int = 256  # prompts x n for one request
    max_messages: int = 1024
    max_stop: int = 16  # stop strings per request (OpenAI allows 4; we are more lenient)
    max_stop_chars: int = 256
    max_stop_token_ids: int = 64
    max_logprobs: int = 20
    max_logit_bias: int = 1024
    max_string_field_chars: int = 256  # model, user, message name

    # --- admission (backpressure) ------------------------------------------------------------
    max_waiting_requests: int = 512
    max_waiting_prompt_tokens: int = 1 << 20
    retry_after_s: int = 1

    # --- lifecycle -------------------------------------------------------------------------
    drain_grace_s: float = 30.0  # SIGTERM: how long in-flight requests may keep running
    health_stall_s: float = 30.0  # /health is 503 when pending work saw no step for this long
    warmup: bool = True  # /ready waits for one short generation to succeed

    # --- error messages ----------------------------------------------------------------------
    max_error_chars: int = 512

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_header_bytes", "max_header_count", "max_n",
                     "max_prompts", "max_choices", "max_messages", "max_stop", "max_stop_chars",
                     "max_waiting_requests", "max_waiting_prompt_tokens", "max_error_chars"):
            if getattr(self, name) < 1:
                raise ValueError(f"ServerConfig.{name} must be at least 1")
        if self.drain_grace_s < 0 or self.health_stall_s <= 0:
            raise ValueError("ServerConfig.drain_grace_s must be >= 0 and health_stall_s > 0")
