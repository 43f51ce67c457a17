"""The real HTTP server over a random-weight engine, for B4.

`python -m cormorant.bench.serve_random --model-config qwen3-0.6b --port 8123 ...`.
Same app (server.app.build_app), same engine client (frontend.async_llm.AsyncLLM, its core
in a thread or in its own process) and the same uvicorn set-up
(server.launch.uvicorn_config, DrainingServer) as `cormorant serve`; only the engine's
EngineConfig names a configuration directory with load_format "random" (bench.context), so
the weights are random, the tokenizer synthetic and no checkpoint is needed. Admission limits are raised so that the benchmark measures queueing in the engine,
not 503s from the admission controller. Binds loopback only (no API key).
Imports bench, server, frontend; uvicorn.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import sys

from cormorant.bench.context import EngineSettings


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m cormorant.bench.serve_random")
    p.add_argument("--model-config", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--max-num-seqs", type=int, default=256)
    p.add_argument("--max-num-batched-tokens", type=int, default=8192)
    p.add_argument("--max-model-len", type=int, default=2048)
    p.add_argument("--num-kv-blocks", type=int, default=None)
    p.add_argument("--async-scheduling", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--engine-process", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--tensor-parallel-size", type=int, default=1)
    p.add_argument("--batch-concurrency", type=int, default=None,
                   help="batch lines in flight at once (default: the server's)")
    p.add_argument("--profile-out", default=None,
                   help="cProfile the server's event-loop thread; write the top functions here")
    p.add_argument("--log-level", default="warning")
    return p.parse_args(argv)


def _known_fields(cls, values: dict) -> dict:
    """The server's settings are still growing: pass only the fields this version has."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in values.items() if k in names}


def _configure_request_log() -> None:
    """As `cormorant serve` does, so B4 pays the per-request log line that production pays."""
    try:
        from cormorant.gateway.telemetry.request_log import configure_request_log
    except ImportError:
        return
    configure_request_log()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from cormorant.frontend.async_llm import AsyncLLM
    from cormorant.server.app import build_app
    from cormorant.server.config import ServerConfig
    from cormorant.server.launch import uvicorn_config
    from cormorant.server.uvicorn_server import DrainingServer

    settings = EngineSettings(dtype=args.dtype, device=args.device,
                              max_num_seqs=args.max_num_seqs,
                              max_num_batched_tokens=args.max_num_batched_tokens,
                              max_model_len=args.max_model_len, num_kv_blocks=args.num_kv_blocks,
                              async_scheduling=args.async_scheduling,
                              tensor_parallel_size=args.tensor_parallel_size)
    engine_config = settings.engine_config(args.model_config)  # random weights, by config
    # As `cormorant serve` decides: the engine core in its own process on CUDA.
    llm = AsyncLLM.from_config(engine_config, model_name=f"random-{args.model_config}",
                               engine_process=args.engine_process)
    try:
        config = ServerConfig(**_known_fields(ServerConfig, dict(
            host="127.0.0.1", port=args.port, model_version="random",
            max_waiting_requests=1 << 20, max_waiting_prompt_tokens=1 << 30, drain_grace_s=5.0,
            usage_db=":memory:",  # no usage file left behind in the user's home
            max_body_bytes=256 << 20,  # b4b uploads its batch file (files_dir None: a temp dir)
            **({} if args.batch_concurrency is None
               else {"batch_concurrency": args.batch_concurrency}))))
        _configure_request_log()
        app = build_app(llm, config)
        server = DrainingServer(uvicorn_config(app, config, args.log_level),
                                app.state.cormorant.lifecycle)
        _run_profiled(server.run, args.profile_out)
    finally:
        llm.shutdown()
    return 0


def _run_profiled(run, out: str | None) -> None:
    """Where the HTTP process spends its time under load (B4 --profile): pstats as text."""
    if out is None:
        run()
        return
    import cProfile
    import io
    import pstats

    profiler = cProfile.Profile()
    try:
        profiler.runcall(run)
    finally:
        text = io.StringIO()
        stats = pstats.Stats(profiler, stream=text)
        stats.sort_stats("tottime").print_stats(45)
        stats.sort_stats("cumulative").print_stats(45)
        with open(out, "w") as fh:
            fh.write(text.getvalue())


if __name__ == "__main__":
    sys.exit(main())
