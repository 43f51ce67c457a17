"""Clients that go away, streaming or not, get their engine requests aborted and their KV
blocks freed: afterwards the engine holds exactly what it held before."""
from __future__ import annotations

import asyncio
import random
import time

import httpx
import pytest

LONG = 200  # tokens: long enough that every dropped stream is cut mid-generation


def _wait_idle(llm, num_free_at_start: int, timeout: float = 15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stats = llm.stats()
        if (stats.num_running == 0 and stats.num_waiting == 0
                and stats.num_free_blocks == num_free_at_start):
            return stats
        time.sleep(0.02)
    return llm.stats()


async def _one_client(server, i: int, drop_after: int | None) -> str:
    client = server.async_client()
    kwargs = dict(model=server.model, max_tokens=LONG, stream=True, temperature=1.0, seed=i,
                  extra_body={"ignore_eos": True})
    if i % 2:
        stream = await client.chat.completions.create(
            messages=[{"role": "user", "content": f"Tell me story number {i}"}], **kwargs)
    else:
        stream = await client.completions.create(prompt=f"Once upon a time {i}", **kwargs)
    count = 0
    try:
        async for _ in stream:
            if drop_after is not None and count >= drop_after:
                await stream.close()  # the client goes away mid-stream
                return "dropped"
            count += 1
        return "done"
    finally:
        await client.close()


def test_fifty_streams_half_dropped(tiny_server, tiny_llm):
    start = _wait_idle(tiny_llm, tiny_llm.stats().num_free_blocks)
    num_free = start.num_free_blocks
    rng = random.Random(0)
    plan = [rng.randrange(0, LONG // 2) if i % 4 in (0, 3) else None for i in range(50)]

    async def main():
        return await asyncio.gather(*(_one_client(tiny_server, i, drop)
                                      for i, drop in enumerate(plan)))

    results = asyncio.run(main())
    assert results.count("dropped") == sum(d is not None for d in plan) == 25
    end = _wait_idle(tiny_llm, num_free)
    assert (end.num_running, end.num_waiting) == (0, 0)
    assert end.num_free_blocks == num_free
    assert tiny_server.app.state.cormorant.lifecycle.num_in_flight == 0
    state = tiny_server.app.state.cormorant
    admission = state.generators()[0].admission
    assert [d.in_flight for d in state.pool.deployments.values()] == [0]  # leases back
    assert (admission.num_waiting, admission.num_waiting_prompt_tokens) == (0, 0)


def _steps_until_idle(llm, timeout: float = 10.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stats = llm.stats()
        if stats.num_running == 0:
            return stats.steps
        time.sleep(0.001)
    raise AssertionError("the request was not aborted")


@pytest.mark.parametrize("stream", [True, False])
def test_abort_is_prompt(tiny_server, tiny_llm, stream):
    """From the client's disconnect to the request leaving the engine: two steps at most."""
    # Non-streaming: as long as the context allows, so the client surely gives up first.
    body = {"model": tiny_server.model, "prompt": "Hello", "max_tokens": LONG if stream else 500,
            "stream": stream, "ignore_eos": True}
    num_free = _wait_idle(tiny_llm, tiny_llm.stats().num_free_blocks).num_free_blocks
    with httpx.Client(timeout=None) as http:
        if stream:
            with http.stream("POST", tiny_server.url + "/v1/completions", json=body) as resp:
                lines = resp.iter_lines()
                for _ in range(10):
                    next(lines)
        else:
            # The client gives up (read timeout) while the server is still generating.
            with pytest.raises(httpx.ReadTimeout):
                http.post(tiny_server.url + "/v1/completions", json=body,
                          timeout=httpx.Timeout(10, read=0.3))
    steps_at_close = tiny_llm.stats().steps  # the connection is closed by now
    steps_when_idle = _steps_until_idle(tiny_llm)
    # The disconnect is seen by the event loop while the engine thread keeps stepping; the
    # abort lands before the engine's next step after that.
    assert steps_when_idle - steps_at_close <= 2, (steps_at_close, steps_when_idle)
    assert _wait_idle(tiny_llm, num_free).num_free_blocks == num_free
