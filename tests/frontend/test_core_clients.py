"""AsyncLLM over its two engine-core clients: the engine core in a child process (msgpack over
a socket) answers exactly as the in-thread one does; aborts free blocks; a dead engine process
ends open streams with EngineDeadError and shows in stats(); a stopped engine process is a
stall once work arrives, one using CPU is progress; a model that cannot load fails the start
clearly; a clean shutdown logs no error and leaves no process behind; the messages
round-trip through the one codec."""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from cormorant.config import CacheConfig, EngineConfig, ModelConfig, SchedulerConfig
from cormorant.engine.messages import (AbortRequest, AddRequest, EngineReady, EngineStats,
                                       StepOutputs, StopSequence, decode, encode)
from cormorant.engine.types import EngineOutput, EngineRequest
from cormorant.frontend.async_llm import AsyncLLM, EngineDeadError
from cormorant.frontend.builder import build_engine, build_tokenizer
from cormorant.frontend.core_client import (Liveness, ProcessCoreClient, ThreadCoreClient,
                                            process_cpu_time)
from cormorant.server.watchdog import stall_reason
from cormorant.sampling_params import SamplingParams

ROOT = Path(__file__).resolve().parents[2]
PROMPTS = [[5, 6, 7, 8], list(range(10, 50)), [3] * 17]


def _config(model: str) -> EngineConfig:
    return EngineConfig(model=model, seed=0, cache=CacheConfig(num_blocks=128),
                        scheduler=SchedulerConfig(max_model_len=256, max_num_seqs=8))


@pytest.fixture(scope="module")
def process_llm(tiny_llama):
    llm = AsyncLLM.from_config(_config(tiny_llama), engine_process=True)
    yield llm
    llm.shutdown()


async def _run(llm, prompts, params, **kwargs) -> list[list[int]]:
    async def one(i, ids):
        final = None
        async for out in llm.generate(f"r{i}-{time.monotonic_ns()}", ids, params, **kwargs):
            final = out
        return [list(o.token_ids) for o in final.outputs]

    return await asyncio.gather(*(one(i, p) for i, p in enumerate(prompts)))


def test_the_messages_round_trip():
    params = SamplingParams(temperature=0.5, logit_bias={3: 1.5}, stop=["x"], seed=4, n=2)
    req = EngineRequest("a", [1, 2], params, 12.5, "t", 2, 0.5, cache_salt="tenant-a")
    assert decode(encode(AddRequest(req))) == AddRequest(req)
    assert decode(encode(AbortRequest("a"))) == AbortRequest("a")
    assert decode(encode(StopSequence("a", 1))) == StopSequence("a", 1)
    out = EngineOutput("a", 1, [7], "stop", [(-0.5, {7: -0.5, 9: -1.0})], [None, (-1.0, {})],
                       4, 2, 7, 3.25, None)
    step = StepOutputs([out], EngineStats(num_running=3, last_step_time=1.5))
    assert decode(encode(step)) == step
    config = _config("m")
    model = ModelConfig("LlamaForCausalLM", 64, 16, 32, 2, 2, 1, 8, 128, eos_token_ids=(2, 7),
                        rope_scaling=(("type", "linear"), ("factor", 2.0)))
    ready = decode(encode(EngineReady(config, model, 123)))
    assert ready == EngineReady(config, model, 123)
    assert isinstance(ready.model_config.eos_token_ids, tuple)
    with pytest.raises(TypeError):
        encode(object())  # only plain data and the registered dataclasses travel


def test_same_tokens_as_the_in_thread_engine(process_llm, tiny_llama):
    local = AsyncLLM.from_config(_config(tiny_llama), engine_process=False)
    assert isinstance(local.client, ThreadCoreClient)
    assert isinstance(process_llm.client, ProcessCoreClient)
    try:
        for params in (SamplingParams(max_tokens=12, temperature=0.0),
                       SamplingParams(max_tokens=10, temperature=0.8, seed=3, n=2)):
            assert asyncio.run(_run(process_llm, PROMPTS, params)) == \
                asyncio.run(_run(local, PROMPTS, params))
    finally:
        local.shutdown()
    assert process_llm.max_model_len == 256 and process_llm.memory_bytes > 0
    assert process_llm.model_config == local.model_config


class RecordingClient(ThreadCoreClient):
    """The in-thread client, keeping the requests it was given."""

    def add(self, request: EngineRequest) -> None:
        self.added.append(request)
        super().add(request)


def test_generate_passes_the_cache_salt_and_fair_queue_fields(tiny_llama):
    client = RecordingClient(build_engine(_config(tiny_llama)))
    client.added = []
    llm = AsyncLLM(client, build_tokenizer(_config(tiny_llama)))
    greedy = SamplingParams(max_tokens=6, temperature=0.0)
    try:
        salted = asyncio.run(_run(llm, PROMPTS[:1], greedy, cache_salt="tenant-a",
                                  tenant="a", priority=3, weight=2.0))
        assert salted == asyncio.run(_run(llm, PROMPTS[:1], greedy))  # same answer
    finally:
        llm.shutdown()
    first, second = client.added
    assert (first.cache_salt, first.tenant, first.priority, first.weight) == ("tenant-a", "a",
                                                                               3, 2.0)
    assert second.cache_salt == ""


def test_abort_frees_the_blocks(process_llm):
    free = process_llm.stats().num_free_blocks

    async def leave_early():
        gen = process_llm.generate("early", list(range(20, 60)),
                                   SamplingParams(max_tokens=200, ignore_eos=True))
        async for _ in gen:
            break
        await gen.aclose()  # closing the stream aborts the request

    asyncio.run(leave_early())
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (process_llm.stats().num_free_blocks != free
                                           or process_llm.stats().num_running):
        time.sleep(0.05)
    stats = process_llm.stats()
    assert (stats.num_free_blocks, stats.num_running) == (free, 0) and stats.is_loop_alive


def test_a_dead_engine_process_ends_the_streams(tiny_llama):
    llm = AsyncLLM.from_config(_config(tiny_llama), engine_process=True)

    async def stream_then_kill():
        gen = llm.generate("doomed", [4, 5, 6], SamplingParams(max_tokens=250,
                                                               ignore_eos=True))
        await gen.__anext__()
        os.kill(llm.client.pid, signal.SIGKILL)
        with pytest.raises(EngineDeadError):
            async for _ in gen:
                pass

    try:
        asyncio.run(asyncio.wait_for(stream_then_kill(), 60))
        assert not llm.stats().is_loop_alive
        with pytest.raises(EngineDeadError):
            asyncio.run(_run(llm, PROMPTS[:1], SamplingParams(max_tokens=2)))
    finally:
        llm.shutdown()


def test_a_clean_shutdown_logs_no_error_and_leaves_no_process(tiny_llama, caplog):
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    llm = AsyncLLM.from_config(_config(tiny_llama), engine_process=True)
    started = [p for p in psutil.Process().children(recursive=True) if p.pid not in before]
    assert [p.pid for p in started] == [llm.client.pid]  # the engine, and nothing beside it
    assert asyncio.run(_run(llm, PROMPTS[:1], SamplingParams(max_tokens=3, temperature=0.0)))
    with caplog.at_level(logging.WARNING):
        llm.shutdown()
        time.sleep(0.2)  # the reader thread sees the end of the socket
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    assert not psutil.pid_exists(llm.client.pid) or \
        psutil.Process(llm.client.pid).status() == psutil.STATUS_ZOMBIE
    assert not llm.stats().is_loop_alive


def test_a_model_that_cannot_load_fails_the_start(tmp_path):
    (tmp_path / "config.json").write_text('{"architectures": ["NoSuchForCausalLM"]}')
    with pytest.raises(RuntimeError, match="failed to start"):
        ProcessCoreClient(_config(str(tmp_path)), start_timeout_s=120)


def test_the_engine_process_exits_when_its_parent_dies(tiny_llama, tmp_path):
    """A server killed hard (SIGKILL: no shutdown runs) leaves no engine process behind."""
    script = tmp_path / "parent.py"
    script.write_text(
        "import sys, time\n"
        "from cormorant.config import CacheConfig, EngineConfig\n"
        "from cormorant.frontend.core_client import ProcessCoreClient\n"
        "client = ProcessCoreClient(EngineConfig(model=sys.argv[1],\n"
        "                                        cache=CacheConfig(num_blocks=64)))\n"
        "print(client.pid, flush=True)\n"
        "time.sleep(600)\n")
    parent = subprocess.Popen([sys.executable, str(script), tiny_llama], stdout=subprocess.PIPE,
                              text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        engine = psutil.Process(int(parent.stdout.readline()))
    finally:
        parent.kill()
        parent.wait()
    engine.wait(timeout=30)  # raises psutil.TimeoutExpired if the engine lives on
    assert not engine.is_running()


STALL_S = 2.0


def test_a_stopped_engine_process_is_a_stall_once_work_arrives(process_llm):
    """The engine process stopped (SIGSTOP: no step, no CPU) right after an idle spell: a
    request arrives and liveness reports the stall within the threshold; once the process
    runs again the request completes and the stall is gone."""
    time.sleep(STALL_S + 0.5)  # idle longer than the threshold: not a stall
    assert stall_reason(process_llm.stats(), STALL_S) is None
    pid = process_llm.client.pid

    async def stop_then_request():
        os.kill(pid, signal.SIGSTOP)
        try:
            task = asyncio.ensure_future(_run(process_llm, PROMPTS[:1],
                                              SamplingParams(max_tokens=3, temperature=0.0)))
            while (reason := stall_reason(process_llm.stats(), STALL_S)) is None:
                assert not task.done()
                await asyncio.sleep(0.1)
        finally:
            os.kill(pid, signal.SIGCONT)
        return reason, await task

    reason, tokens = asyncio.run(asyncio.wait_for(stop_then_request(), 60))
    assert "no progress" in reason
    assert len(tokens[0][0]) == 3
    assert stall_reason(process_llm.stats(), STALL_S) is None


@pytest.mark.parametrize("busy", [True, False])
def test_an_engine_process_using_cpu_is_progress(busy):
    """The process client's progress signal: another process's CPU time (/proc). Pending work
    and no step for 2x the threshold is a stall only if that process used no CPU meanwhile."""
    code = "while True: pass" if busy else "import time; time.sleep(60)"
    other = subprocess.Popen([sys.executable, "-c", code])
    try:
        liveness = Liveness(lambda: process_cpu_time(other.pid))
        liveness.apply(EngineStats())  # first look
        liveness.added(EngineRequest("r", [1, 2], SamplingParams()))
        reasons = []
        for _ in range(int(2 * STALL_S / 0.25)):
            time.sleep(0.25)
            reasons.append(stall_reason(liveness.apply(EngineStats(last_step_time=0.0)),
                                        STALL_S))
        assert (set(reasons) == {None}) if busy else (reasons[-1] is not None), reasons
    finally:
        other.kill()
        other.wait()
