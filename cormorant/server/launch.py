"""`cormorant serve`: arguments, safety checks, engine start-up and the uvicorn run.

`add_serve_args(parser)` and `run_server(args) -> int` are what cormorant.cli wires in; this
module also runs alone (`python -m cormorant.server.launch`) for tests and debugging.
Order matters: the bind is checked before the model is loaded, so a refused configuration
fails in milliseconds. Engines and encoders are built by hosting.loader, so no server module
names the engine implementation.
"""
from __future__ import annotations

import argparse
import functools
import ipaddress
import logging
import os
import sys
from pathlib import Path

import uvicorn

from cormorant.config import EngineConfig
from cormorant.engine_args import add_engine_args, engine_config_from
from cormorant.gateway.auth.keys import static_key_weakness
from cormorant.gateway.auth.keystore import DEFAULT_KEYS_DB
from cormorant.gateway.crypto import DATA_KEY_ENV, DataKeyError, parse_data_key
from cormorant.gateway.quotas.redis_store import check_redis
from cormorant.gateway.telemetry.request_log import TelemetryConfigError, configure_request_log
from cormorant.hosting.loader import (load_object, make_encoder, make_engine, model_version,
                                      source_path)
from cormorant.hosting.registry import Registry, RegistryError, load_registry_file, resolve_source
from cormorant.server.app import build_app
from cormorant.server.config import ServerConfig
from cormorant.server.route_drift import add_drift_args, drift_args_error, drift_settings
from cormorant.server.uvicorn_server import DrainingServer, JSONErrorH11Protocol

logger = logging.getLogger("cormorant.server")
# Room for the request line and framing on top of the header budget; past this h11 answers 431.
H11_SLACK_BYTES = 8192
_DEFAULTS = ServerConfig()
# Beside the keys database's default (gateway.auth.keystore.DEFAULT_KEYS_DB): one folder of state.
DEFAULT_USAGE_DB = str(Path.home() / ".cormorant" / "usage.db")
DEFAULT_FILES_DIR = str(Path.home() / ".cormorant" / "files")  # beside a Postgres usage db
# A served process exits when stalled this long past --health-stall-s (ServerConfig: never).
DEFAULT_WATCHDOG_EXIT_GRACE_S = 60.0


def add_serve_args(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--served-model-name", default=None, help="the name clients use (default: the model's)")
    add("--models", default=None, metavar="FILE",
        help="serve the models, versions and aliases of this registry file (TOML or JSON; "
             "see docs/models.md) instead of --model")
    add("--embedding-model", action="append", default=[], metavar="PATH[=NAME]",
        help="also serve this BERT-family encoder directory at /v1/embeddings (and "
             "/v1/classify for a classification head), as NAME (default: the directory's "
             "name); repeatable")
    add("--reasoning-parser", choices=("auto", "qwen3", "none"),
        default=_DEFAULTS.reasoning_parser,
        help="split <think>...</think> output into reasoning_content: auto (when the chat "
             "template knows the tags), qwen3 (always) or none")
    add("--host", default=_DEFAULTS.host)
    add("--port", type=int, default=_DEFAULTS.port)
    add("--api-key", default=os.environ.get("CORMORANT_API_KEY"),
        help="require 'Authorization: Bearer KEY' (default: $CORMORANT_API_KEY)")
    add("--insecure", action="store_true",
        help="allow binding a non-loopback address without an API key")
    add_auth_args(parser)
    add_engine_args(parser, "serve")
    limits = parser.add_argument_group("server limits")
    for name, help_text in (("max_body_bytes", "413 above this request body size"),
                            ("max_n", "largest n accepted"),
                            ("max_waiting_requests", "503 above this many waiting requests"),
                            ("max_waiting_prompt_tokens", "503 above this many queued prompt "
                                                          "tokens"),
                            ("max_connections", "open HTTP connections (idle ones too)"),
                            ("max_connections_per_client", "the same, per client address")):
        limits.add_argument("--" + name.replace("_", "-"), type=int,
                            default=getattr(_DEFAULTS, name), help=help_text)
    limits.add_argument("--header-timeout-s", type=float, default=_DEFAULTS.header_timeout_s,
                        help="408 and close when the request headers take longer")
    limits.add_argument("--body-timeout-s", type=float, default=_DEFAULTS.body_timeout_s,
                        help="408 and close when the request body takes longer")
    limits.add_argument("--drain-grace-s", type=float, default=None,
                        help="on SIGTERM, how long in-flight requests may run on (default "
                             f"{_DEFAULTS.drain_grace_s:g} s; with --ray: how long a stopping "
                             "engine replica or ingress keeps serving its streams, on "
                             "down-scaling too, default 120 s)")
    limits.add_argument("--health-stall-s", "--watchdog-stall-seconds", dest="health_stall_s",
                        type=float, default=_DEFAULTS.health_stall_s,
                        help="/health turns 503 when pending work saw no engine progress (a "
                             "step ending, or the engine using CPU) this long")
    limits.add_argument("--health-max-step-s", type=float,
                        default=_DEFAULTS.health_max_step_s,
                        help="one engine step running longer than this is stuck even while it "
                             "computes; 0: no ceiling")
    limits.add_argument("--watchdog-exit-grace", type=float,
                        default=DEFAULT_WATCHDOG_EXIT_GRACE_S,
                        help="exit with status 70 (for a restart) when the engine stays stalled "
                             "this many seconds longer; negative: never exit")
    obs = parser.add_argument_group("observability")
    obs.add_argument("--log-prompts", action="store_true",
                     help="put prompt and completion text in the request log (default: counts)")
    obs.add_argument("--usage-db", default=DEFAULT_USAGE_DB,
                     help="per-key usage: a SQLite file, :memory:, or a postgresql:// URL")
    obs.add_argument("--otlp-endpoint", default=None,
                     help="OTLP/HTTP collector URL for request spans (needs opentelemetry-sdk "
                          "and opentelemetry-exporter-otlp-proto-http)")
    add_quota_args(parser)
    add_cache_args(parser)
    add_batch_args(parser)
    add_drift_args(parser)


def add_batch_args(parser: argparse.ArgumentParser) -> None:
    batch = parser.add_argument_group("batch jobs (/v1/files, /v1/batches; jobs live in "
                                      "--usage-db; set CORMORANT_DATA_KEY to encrypt at rest)")
    batch.add_argument("--files-dir", default=None,
                       help="uploaded and produced files, made owner-only (0700); default: "
                            "'files' beside a SQLite --usage-db, else ~/.cormorant/files")
    for name, kind in (("batch_max_file_bytes", int), ("batch_max_lines", int),
                       ("batch_window_s", float), ("batch_concurrency", int),
                       ("batch_lease_s", float),
                       ("batch_rpm", int), ("batch_tpm", int), ("batch_max_concurrent", int)):
        batch.add_argument("--" + name.replace("_", "-"), type=kind,
                           default=getattr(_DEFAULTS, name))


def batch_settings(args: argparse.Namespace) -> dict:
    """The batch fields of ServerConfig, the data key read from the environment (a bad one
    raises gateway.crypto.DataKeyError)."""
    key = os.environ.get(DATA_KEY_ENV)
    files_dir = args.files_dir
    if files_dir is None:
        usage_db = args.usage_db or ":memory:"
        files_dir = (DEFAULT_FILES_DIR if usage_db == ":memory:" or "://" in usage_db
                     else str(Path(usage_db).expanduser().parent / "files"))
    return {"files_dir": files_dir, "data_key": parse_data_key(key) if key else None,
            **{name: getattr(args, name) for name in (
                "batch_max_file_bytes", "batch_max_lines", "batch_window_s",
                "batch_concurrency", "batch_lease_s", "batch_rpm", "batch_tpm",
                "batch_max_concurrent")}}


def add_cache_args(parser: argparse.ArgumentParser) -> None:
    cache = parser.add_argument_group("response cache")
    cache.add_argument("--no-response-cache", dest="response_cache", action="store_false",
                       help="do not answer repeated deterministic requests from the cache")
    cache.add_argument("--response-cache-ttl-s", type=float,
                       default=_DEFAULTS.response_cache_ttl_s)
    cache.add_argument("--response-cache-max-entries", type=int,
                       default=_DEFAULTS.response_cache_max_entries)
    cache.add_argument("--response-cache-redis", default=None, metavar="URL",
                       help="keep cached responses in this Redis (default: in this process)")
    cache.add_argument("--semantic-cache-model", default=None, metavar="NAME",
                       help="a served embedding model: requests sending 'x-semantic-cache: on' "
                            "reuse answers to similar prompts")
    cache.add_argument("--semantic-cache-threshold", type=float,
                       default=_DEFAULTS.semantic_cache_threshold)


def add_quota_args(parser: argparse.ArgumentParser) -> None:
    quotas = parser.add_argument_group("quotas, admission and fair queueing")
    quotas.add_argument("--redis", default=None, metavar="URL",
                        help="keep quota counters in this Redis (redis://host:port/db), shared "
                             "by every server given the same URL (default: in this process)")
    for name, what in (("rpm", "requests per minute"), ("tpm", "tokens per minute"),
                       ("max-concurrent", "concurrent requests")):
        quotas.add_argument(f"--default-{name}", type=int, default=None,
                            help=f"{what} of a key that sets none, and of every caller when "
                                 "auth is off (default: unlimited)")
    quotas.add_argument("--max-queue-delay-s", type=float, default=_DEFAULTS.max_queue_delay_s,
                        help="503 when the queue needs longer than this to drain")
    quotas.add_argument("--max-waiting-kv-caches", type=float,
                        default=_DEFAULTS.max_waiting_kv_caches,
                        help="503 when the queued prompts need more KV than this many caches")


def add_auth_args(parser: argparse.ArgumentParser) -> None:
    auth = parser.add_argument_group("API keys and TLS")
    auth.add_argument("--keys-db", nargs="?", const=str(DEFAULT_KEYS_DB),
                      default=os.environ.get("CORMORANT_KEYS_DB"),
                      help="authenticate with the scoped keys of this SQLite database, managed "
                           f"by `cormorant keys` (no value: {DEFAULT_KEYS_DB}; default: "
                           "$CORMORANT_KEYS_DB, else not used)")
    auth.add_argument("--keys-file", default=None,
                      help="also accept the keys of this JSON or TOML key file (read-only)")
    auth.add_argument("--metrics-public", action="store_true",
                      help="serve /metrics without a key (default: the metrics scope)")
    auth.add_argument("--ssl-certfile", default=None, help="serve HTTPS with this certificate")
    auth.add_argument("--ssl-keyfile", default=None, help="the certificate's private key")


def auth_args_error(args: argparse.Namespace) -> str | None:
    """Checked before the model loads: a typo in a path should fail in milliseconds."""
    if (args.ssl_certfile is None) != (args.ssl_keyfile is None):
        return "--ssl-certfile and --ssl-keyfile go together"
    for flag in ("keys_file", "ssl_certfile", "ssl_keyfile"):
        path = getattr(args, flag)
        if path is not None and not Path(path).expanduser().is_file():
            return f"--{flag.replace('_', '-')}: no such file: {path}"
    return None


def bind_error(host: str, api_key: str | None, insecure: bool,
               static_key: str | None = None) -> str | None:
    """A non-loopback bind without a key (or with a guessable static --api-key) would hand
    the model to the whole network."""
    if static_key and not static_key.strip():
        return "--api-key is empty or whitespace"
    try:
        is_loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        is_loopback = host == "localhost"
    if static_key is not None and not is_loopback and not insecure:
        weakness = static_key_weakness(static_key)
        if weakness:
            return f"refusing to bind {host} with a weak --api-key: {weakness}"
    if api_key or insecure or is_loopback:
        return None
    return (f"refusing to bind {host} without an API key: pass --keys-db or --api-key (or "
            "set CORMORANT_API_KEY), bind 127.0.0.1, or pass --insecure")


def engine_config(args: argparse.Namespace, model: str) -> EngineConfig:
    return engine_config_from(args, "serve", model=model)


def server_config(args: argparse.Namespace, version: str) -> ServerConfig:
    return ServerConfig(
        served_model_name=args.served_model_name, model_version=version, host=args.host,
        reasoning_parser=args.reasoning_parser,
        port=args.port, api_key=args.api_key, insecure=args.insecure, keys_db=args.keys_db,
        keys_file=args.keys_file, metrics_public=args.metrics_public,
        ssl_certfile=args.ssl_certfile, ssl_keyfile=args.ssl_keyfile,
        max_body_bytes=args.max_body_bytes, max_n=args.max_n,
        max_waiting_requests=args.max_waiting_requests,
        max_waiting_prompt_tokens=args.max_waiting_prompt_tokens,
        max_connections=args.max_connections,
        max_connections_per_client=args.max_connections_per_client,
        header_timeout_s=args.header_timeout_s, body_timeout_s=args.body_timeout_s,
        drain_grace_s=(_DEFAULTS.drain_grace_s if args.drain_grace_s is None
                       else args.drain_grace_s), health_stall_s=args.health_stall_s,
        health_max_step_s=args.health_max_step_s,
        watchdog_exit_grace_s=args.watchdog_exit_grace, log_prompts=args.log_prompts,
        usage_db=args.usage_db, otlp_endpoint=args.otlp_endpoint,
        redis_url=args.redis, default_rpm=args.default_rpm, default_tpm=args.default_tpm,
        default_max_concurrent=args.default_max_concurrent,
        max_queue_delay_s=args.max_queue_delay_s,
        max_waiting_kv_caches=args.max_waiting_kv_caches,
        response_cache=args.response_cache, response_cache_ttl_s=args.response_cache_ttl_s,
        response_cache_max_entries=args.response_cache_max_entries,
        response_cache_redis_url=args.response_cache_redis,
        semantic_cache_model=args.semantic_cache_model,
        semantic_cache_threshold=args.semantic_cache_threshold, **batch_settings(args),
        **drift_settings(args))


def encoder_specs(specs: list[str]) -> list[tuple[str, str | None]]:
    """--embedding-model PATH[=NAME] values -> (path, name or None)."""
    return [(path, name or None) for path, _, name in (spec.partition("=") for spec in specs)]


def load_encoders(specs: list[str], dtype: str, device: str) -> list:
    """--embedding-model values -> encoder objects (hosting.loader.make_encoder)."""
    return [make_encoder(path, name, dtype, device) for path, name in encoder_specs(specs)]


def uvicorn_config(app, config: ServerConfig, log_level: str) -> uvicorn.Config:
    return uvicorn.Config(
        app, host=config.host, port=config.port, log_level=log_level, lifespan="on",
        http=functools.partial(JSONErrorH11Protocol, limits=config),  # type: ignore[arg-type]
        h11_max_incomplete_event_size=config.max_header_bytes + H11_SLACK_BYTES,
        # Our drain already let in-flight work finish; this only closes idle connections.
        timeout_graceful_shutdown=3, server_header=False,
        ssl_certfile=config.ssl_certfile, ssl_keyfile=config.ssl_keyfile)


def run_server(args: argparse.Namespace) -> int:
    # --log-level belongs to the top-level parser of cormorant.cli (and of main() below).
    log_level = str(getattr(args, "log_level", "info")).lower()
    logging.basicConfig(level=log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    configure_request_log()  # one bare JSON line per request on stderr, whatever the level
    error = auth_args_error(args) or drift_args_error(args) or bind_error(
        args.host, args.api_key or args.keys_db or args.keys_file, args.insecure, args.api_key)
    if error:
        print(f"cormorant serve: {error}", file=sys.stderr)
        return 2
    if args.redis and (error := check_redis(args.redis)):  # fail now, not on every request
        print(f"cormorant serve: --redis: {error}", file=sys.stderr)
        return 2
    try:
        batch_settings(args)
    except DataKeyError as exc:
        print(f"cormorant serve: {exc}", file=sys.stderr)
        return 2
    if args.models:
        return _serve_registry(args, log_level)
    if args.model is None:
        args.model = str(source_path(None))
    try:  # before the generation model: a wrong encoder path fails in seconds
        encoders = load_encoders(args.embedding_model, args.dtype, args.device)
    except (OSError, ValueError) as exc:
        print(f"cormorant serve: --embedding-model: {exc}", file=sys.stderr)
        return 2
    engine = engine_config(args, args.model)
    llm = make_engine(engine, None, args.engine_process)
    try:
        config = server_config(args, model_version(args.model))
        return _run(lambda: build_app(llm, config, encoders), config, log_level)
    finally:
        llm.shutdown()
        for encoder in encoders:
            encoder.shutdown()


def _serve_registry(args: argparse.Namespace, log_level: str) -> int:
    """--models FILE: every `load = "startup"` model is built before the port opens (a bad
    entry fails here, exit 2); the others load on demand or through the admin API."""
    try:
        registry = load_registry_file(args.models)
    except RegistryError as exc:
        print(f"cormorant serve: --models: {exc}", file=sys.stderr)
        return 2
    policy = args.scheduling
    loaded: dict[str, tuple] = {}
    try:
        try:
            _load_startup(registry, loaded, policy, args.engine_process)
        except (OSError, ValueError, RuntimeError) as exc:
            print(f"cormorant serve: --models: {exc}", file=sys.stderr)
            return 2
        config = server_config(args, "")
        return _run(lambda: build_app(config=config, registry=registry, loaded=loaded,
                                      loader=lambda spec, src: load_object(
                                          spec, src, policy, args.engine_process)),
                    config, log_level)
    finally:
        for obj, _ in loaded.values():
            obj.shutdown()


def _load_startup(registry: Registry, loaded: dict, policy: str,
                  engine_process: bool | None) -> None:
    for spec in registry.specs.values():
        if spec.load == "startup":
            try:
                source = resolve_source(spec.source, registry.settings.roots)
                loaded[spec.id] = load_object(spec, source, policy, engine_process)
            except (OSError, ValueError, RuntimeError) as exc:
                raise RuntimeError(f"{spec.id}: {exc}") from exc


def _run(make_app, config: ServerConfig, log_level: str) -> int:
    try:
        try:
            app = make_app()
        except TelemetryConfigError as exc:
            print(f"cormorant serve: {exc}", file=sys.stderr)
            return 2
        state = app.state.cormorant
        server = DrainingServer(uvicorn_config(app, config, log_level), state.lifecycle)
        try:
            server.run()
        finally:  # models loaded on demand or by the admin API are this process's too
            state.pool.shutdown_now()
    except SystemExit as exc:  # uvicorn exits this way when the port cannot be bound
        return int(exc.code or 1)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cormorant serve",
                                     description="Serve a model over an OpenAI-compatible API.")
    add_serve_args(parser)
    parser.add_argument("--log-level", default="info",
                        choices=["debug", "info", "warning", "error"])
    return run_server(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
