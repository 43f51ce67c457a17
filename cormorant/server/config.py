"""ServerConfig: every knob of the HTTP layer in one frozen dataclass.

Limits live here so that each one is configurable and documented in one place; the request
validators, the middleware and the admission controller all read them from this object.
Imports nothing from cormorant but the package version (it is importable from anywhere).
"""
from __future__ import annotations

from dataclasses import dataclass, field

MiB = 1024 * 1024


@dataclass(frozen=True)
class ServerConfig:
    # --- identity -----------------------------------------------------------------------
    served_model_name: str | None = None  # None: the engine's own model name
    # "<think>" output to reasoning_content: "auto" (when the chat template knows the tags),
    # "qwen3" (always), "none" (never).
    reasoning_parser: str = "auto"
    model_version: str = ""  # short digest of the model files; part of system_fingerprint

    # --- binding and auth -------------------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None  # one static key with every scope (gateway.auth.middleware)
    insecure: bool = False  # allow a non-loopback bind without an API key
    keys_db: str | None = None  # SQLite key database (`cormorant keys`); None: not used
    keys_file: str | None = None  # read-only JSON/TOML key file; None: not used
    keys_refresh_s: float = 1.0  # how soon created/revoked keys take effect
    metrics_public: bool = False  # /metrics without the metrics scope
    ssl_certfile: str | None = None  # TLS: both set, or neither
    ssl_keyfile: str | None = None

    # --- transport bounds (checked before the body is parsed) --------------------------------
    max_body_bytes: int = 4 * MiB
    max_header_bytes: int = 16 * 1024  # all header names and values together
    max_header_count: int = 100
    header_timeout_s: float = 10.0  # request line + headers, from connect or the last response
    body_timeout_s: float = 60.0  # the whole body, from the end of the headers
    max_connections: int = 2048  # open HTTP connections, idle ones included
    max_connections_per_client: int = 256  # the same, per client IP address

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
    retry_after_s: int = 1  # until a drain rate is measured (then Retry-After comes from it)
    max_waiting_kv_caches: float = 4.0  # 503 when the queue needs more KV than this many caches
    max_queue_delay_s: float = 60.0  # 503 when the queue takes longer to drain (measured rate)

    # --- quotas (gateway.quotas): per key; these fill in what a key leaves unset ------------
    default_rpm: int | None = None  # None: unlimited
    default_tpm: int | None = None
    default_max_concurrent: int | None = None
    redis_url: str | None = None  # quota counters shared in Redis; None: in this process

    # --- batch jobs (server.batch_worker): OpenAI's Files and Batch APIs ------------------------
    files_dir: str | None = None  # uploaded and produced files (0700); None: a temporary dir
    batch_max_file_bytes: int = 100 * MiB  # an upload also needs max_body_bytes room
    batch_max_lines: int = 50_000
    batch_window_s: float = 24 * 3600.0  # what completion_window "24h" lasts
    batch_concurrency: int = 16  # batch lines in flight at once, over all batches
    batch_lease_s: float = 15.0  # a killed server's batches pass on after this long
    batch_rpm: int | None = None  # the batch account of every key ("batch:<key id>")
    batch_tpm: int | None = None
    batch_max_concurrent: int | None = None
    data_key: bytes | None = field(default=None, repr=False)  # AES-GCM at rest; None: off

    # --- lifecycle -------------------------------------------------------------------------
    drain_grace_s: float = 30.0  # SIGTERM: how long in-flight requests may keep running
    # /health is 503 when pending work saw no engine progress (a step, or engine CPU time)
    # for this long, or one step has run longer than health_max_step_s (0: no ceiling).
    health_stall_s: float = 30.0
    health_max_step_s: float = 600.0
    warmup: bool = True  # /ready waits for one short generation to succeed
    # Stalled (health_stall_s) this much longer -> exit 70 so an orchestrator restarts us.
    # Negative: never. Off here so an embedded app never kills its host; `serve` turns it on.
    watchdog_exit_grace_s: float = -1.0

    # --- observability (gateway.telemetry: metrics, usage, request_log, tracing) ----------
    log_prompts: bool = False  # the request log carries prompt and completion text
    usage_db: str | None = None  # SQLite file or postgresql:// URL; None: in memory
    otlp_endpoint: str | None = None  # OTLP/HTTP collector for request spans; None: no tracing
    # Drift monitoring (gateway.telemetry.drift): features of finished requests per version.
    drift: bool = True
    drift_window: int = 500  # rows in the rolling current window
    drift_reference_size: int = 500  # the first rows of a version are its reference...
    drift_reference_file: str | None = None  # ...unless this pinned JSONL file gives it
    drift_min_requests: int = 50  # rows each side needs before a feature is scored
    drift_logprobs: bool = False  # ask the engine for chosen-token logprobs (mean_logprob)
    drift_embedding_model: str | None = None  # a served encoder: prompt embedding centroids
    drift_embedding_every: int = 1  # embed every k-th prompt

    # --- response cache (server.cached_responses) ------------------------------------------
    response_cache: bool = False  # `cormorant serve` turns it on (--no-response-cache: off)
    response_cache_ttl_s: float = 600.0
    response_cache_max_entries: int = 10_000
    response_cache_redis_url: str | None = None  # None: in this process
    semantic_cache_model: str | None = None  # a served embedding model; None: no semantic cache
    semantic_cache_threshold: float = 0.95  # cosine similarity of a semantic hit

    # --- error messages ----------------------------------------------------------------------
    max_error_chars: int = 512

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_header_bytes", "max_header_count", "max_n",
                     "max_prompts", "max_choices", "max_messages", "max_stop", "max_stop_chars",
                     "max_waiting_requests", "max_waiting_prompt_tokens", "max_error_chars"):
            if getattr(self, name) < 1:
                raise ValueError(f"ServerConfig.{name} must be at least 1")
        for name in ("max_connections", "max_connections_per_client"):
            if getattr(self, name) < 1:
                raise ValueError(f"ServerConfig.{name} must be at least 1")
        if self.header_timeout_s <= 0 or self.body_timeout_s <= 0:
            raise ValueError("ServerConfig.header_timeout_s and body_timeout_s must be > 0")
        if self.drain_grace_s < 0 or self.health_stall_s <= 0:
            raise ValueError("ServerConfig.drain_grace_s must be >= 0 and health_stall_s > 0")
        if self.drift_logprobs and not self.drift:
            object.__setattr__(self, "drift_logprobs", False)  # nobody would read them
        if self.drift_embedding_every < 1:
            raise ValueError("ServerConfig.drift_embedding_every must be at least 1")
        if min(self.drift_window, self.drift_reference_size, self.drift_min_requests) < 2:
            raise ValueError("ServerConfig.drift_window, drift_reference_size and "
                             "drift_min_requests must be at least 2")
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise ValueError("ServerConfig.ssl_certfile and ssl_keyfile go together")
