"""A tensor-parallel worker killed mid-generation takes the engine down cleanly: through the
real HTTP server and the openai client, every in-flight stream ends with an error within
10 s, /health turns 503, new requests are refused, and no worker process is left behind.
Before that: the engine's liveness counts its workers' CPU time."""
from __future__ import annotations

import asyncio
import os
import signal
import time

import httpx
import openai

from cormorant.config import CacheConfig, EngineConfig, SchedulerConfig
from cormorant.frontend.async_llm import AsyncLLM
from cormorant.frontend.core_client import process_cpu_time
from server_helpers import running_server
from tp_helpers import is_running

NUM_STREAMS = 4


async def _stream(client: openai.AsyncOpenAI, model: str, prompt: str, started: asyncio.Event,
                  counter: list[int]) -> tuple[int, BaseException | None, float]:
    """(chunks received, the error that ended the stream or None, when it ended)."""
    chunks = 0
    try:
        stream = await client.completions.create(
            model=model, prompt=prompt, max_tokens=400, temperature=0, stream=True,
            extra_body={"ignore_eos": True})
        async for _ in stream:
            chunks += 1
            if chunks == 2:
                counter[0] += 1
                if counter[0] == NUM_STREAMS:
                    started.set()
    except (openai.APIError, httpx.HTTPError) as exc:
        return chunks, exc, time.monotonic()
    return chunks, None, time.monotonic()


async def _kill_mid_generation(server, pid: int) -> tuple[list, float]:
    client = server.async_client(timeout=30)
    started, counter = asyncio.Event(), [0]
    tasks = [asyncio.create_task(_stream(client, server.model, f"story {i}", started, counter))
             for i in range(NUM_STREAMS)]
    await asyncio.wait_for(started.wait(), 60)
    os.kill(pid, signal.SIGKILL)
    killed_at = time.monotonic()
    results = await asyncio.wait_for(asyncio.gather(*tasks), 30)
    await client.close()
    return results, killed_at


def test_killed_worker_fails_every_request_and_leaves_no_process(tiny_llama):
    config = EngineConfig(model=tiny_llama, seed=0, tensor_parallel_size=2,
                          cache=CacheConfig(num_blocks=256),
                          scheduler=SchedulerConfig(max_model_len=512))
    # The engine core in its own process, as `serve` runs it on GPUs: the workers are its
    # children, and its death report (EngineFailed) is what fails the streams.
    llm = AsyncLLM.from_config(config, engine_process=True)
    pids = llm.client.worker_pids
    assert len(pids) == 2 and all(is_running(pid) for pid in pids)
    # The loop's liveness counts the workers' CPU (a long step computes there, not in it).
    workers_cpu = sum(process_cpu_time(pid) for pid in pids)
    assert workers_cpu > 1.0 and llm.client.liveness.cpu_time() >= workers_cpu
    try:
        with running_server(llm) as server:
            results, killed_at = asyncio.run(_kill_mid_generation(server, pids[1]))
            for chunks, error, ended_at in results:
                assert chunks >= 2 and error is not None  # cut short, with an error
                assert ended_at - killed_at < 10.0
            health = httpx.get(server.url + "/health", timeout=5)
            assert health.status_code == 503 and not health.json()["engine"]["is_loop_alive"]
            with server.client() as client:
                try:
                    client.completions.create(model=server.model, prompt="again", max_tokens=2)
                    raise AssertionError("a request was served by a dead engine")
                except openai.APIStatusError as exc:
                    assert exc.status_code == 503
            assert not any(is_running(pid) for pid in pids)  # the other rank was killed too
    finally:
        llm.shutdown()
    assert not any(is_running(pid) for pid in [*pids, llm.client.pid])
