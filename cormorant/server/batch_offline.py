"""`cormorant batch run input.jsonl -o output.jsonl`: a batch file answered without a server.

The same job as POST /v1/batches, offline: the file is checked line by line as an upload is
(server.batch_input), the model is loaded in this process (its engine core in a thread) and
each line is served by the same code as the HTTP routes (server.batch_lines) on an app that
is built but never bound to a socket. Every line is answered by the loaded model, whatever
its body's `model` says. The output holds every line in input order, in OpenAI's output-line
shape (a failed one has its status_code >= 400); a progress bar on stderr shows done/total,
generated tokens per second and the time left. Imports server and hosting modules.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import IO, Any

from cormorant.engine_args import add_engine_args, engine_config_from
from cormorant.gateway.auth.keys import Principal
from cormorant.server.batch_input import parse_batch_file
from cormorant.server.batch_lines import Retry, serve_line
from cormorant.server.config import ServerConfig
from cormorant.server.errors import APIError

MAX_LINES = 10_000_000
BAR_WIDTH = 30


def add_batch_args(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="batch_command", required=True)
    run = sub.add_parser("run", help="answer a batch input file (JSONL) offline")
    run.add_argument("input", help="OpenAI batch input: one request per line")
    run.add_argument("-o", "--output", required=True, help="where the results go (JSONL)")
    run.add_argument("--concurrency", type=int, default=64, help="lines in flight at once")
    run.add_argument("--no-progress", dest="progress", action="store_false")
    add_engine_args(run, "serve")


class Progress:
    """done/total, generated tokens per second and ETA, redrawn on one stderr line."""

    def __init__(self, total: int, stream: IO[str] | None, every_s: float = 0.2) -> None:
        self.total, self.stream, self.every_s = total, stream, every_s
        self.done = self.tokens = 0
        self.start = self._last = time.monotonic()

    def add(self, result: dict) -> None:
        self.done += 1
        body = (result.get("response") or {}).get("body") or {}
        self.tokens += int((body.get("usage") or {}).get("completion_tokens") or 0)
        if time.monotonic() - self._last >= self.every_s or self.done == self.total:
            self.draw()

    def line(self) -> str:
        elapsed = max(1e-6, time.monotonic() - self.start)
        filled = BAR_WIDTH * self.done // max(1, self.total)
        eta = elapsed / self.done * (self.total - self.done) if self.done else 0.0
        return (f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {self.done}/{self.total} "
                f"{self.tokens / elapsed:.1f} tok/s ETA {int(eta) // 60}:{int(eta) % 60:02d}")

    def draw(self) -> None:
        self._last = time.monotonic()
        if self.stream is not None:
            end = "\n" if self.done == self.total else ""
            print("\r" + self.line(), end=end, file=self.stream, flush=True)


async def answer_lines(state: Any, lines: list[tuple[str, dict]], out: IO[str],
                       concurrency: int, progress: Progress) -> int:
    """Serve every line (at most `concurrency` at once), writing results in input order;
    returns how many failed."""
    principal = Principal.anonymous()
    model = state.default_model
    slots = asyncio.Semaphore(max(1, concurrency))
    results: dict[int, dict] = {}
    written = failed = 0

    async def one(index: int, custom_id: str, line: dict) -> None:
        line = {**line, "body": {**line["body"], "model": model}}
        async with slots:
            while True:
                try:
                    results[index] = await serve_line(state, principal, custom_id, line)
                    break
                except Retry as retry:
                    await asyncio.sleep(min(1.0, retry.after_s))
        progress.add(results[index])

    tasks = [asyncio.ensure_future(one(i, cid, line)) for i, (cid, line) in enumerate(lines)]
    for task in asyncio.as_completed(tasks):
        await task
        while written in results:
            result = results.pop(written)
            failed += result["response"]["status_code"] >= 400
            out.write(json.dumps(result, separators=(",", ":")) + "\n")
            written += 1
    return failed


def run_batch(args: argparse.Namespace) -> int:
    from cormorant.hosting.loader import make_engine, source_path
    from cormorant.server.app import build_app

    config = ServerConfig(batch_max_file_bytes=1 << 40, batch_max_lines=MAX_LINES,
                          warmup=False)
    try:
        lines = parse_batch_file(Path(args.input).read_bytes(), config.batch_max_file_bytes,
                                 config.batch_max_lines, {"config": config,
                                                          "max_tokens": 1 << 20})
    except (OSError, APIError) as exc:
        print(f"cormorant batch run: {getattr(exc, 'message', exc)}", file=sys.stderr)
        return 2
    model = args.model or str(source_path(None))
    llm = make_engine(engine_config_from(args, "serve", model=model), None,
                      engine_process=False)
    state = None
    try:
        state = build_app(llm, config).state.cormorant  # its serving code, no socket
        progress = Progress(len(lines), sys.stderr if args.progress else None)
        with open(args.output, "w", encoding="utf-8") as out:
            failed = asyncio.run(answer_lines(state, lines, out, args.concurrency, progress))
    finally:
        if state is not None:
            state.batch_jobs.close()
            state.telemetry.close()
        llm.shutdown()
    print(f"{len(lines) - failed} of {len(lines)} lines answered, {failed} failed -> "
          f"{args.output}", file=sys.stderr)
    return 1 if failed else 0
