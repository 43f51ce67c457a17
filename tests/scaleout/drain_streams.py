"""Streams the down-scaling drain test places, one per engine replica, and watches to the end.

`LiveStream` is one greedy streamed completion in a task of its own (its tokens counted by
their logprobs entries). `one_stream_on_each_replica` locates each new stream by the change in
Serve's own per-replica count of ongoing requests (ray_cluster.ongoing_requests), which is
exact while only the test's streams run, so the replica the autoscaler removes is known to
hold one, whichever it is.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from ray_cluster import ongoing_requests


class LiveStream:
    """One greedy streamed completion in a task of its own: the tokens that arrived (counted
    by their logprobs entries) and how it ended. `cancel()` closes it like a client leaving."""

    def __init__(self, client, prompt: list[int], max_tokens: int) -> None:
        self.max_tokens = max_tokens
        self.tokens = 0
        self.finish: str | None = None
        self.completion_tokens: int | None = None
        self.error: str | None = None
        self.task = asyncio.ensure_future(self._run(client, prompt))

    async def _run(self, client, prompt: list[int]) -> None:
        try:
            stream = await client.completions.create(
                model="tiny", prompt=prompt, max_tokens=self.max_tokens, temperature=0,
                logprobs=0, stream=True, stream_options={"include_usage": True},
                extra_body={"ignore_eos": True})
            async for chunk in stream:
                if chunk.usage is not None:
                    self.completion_tokens = chunk.usage.completion_tokens
                for choice in chunk.choices:
                    self.tokens += len(choice.logprobs.tokens) if choice.logprobs else 0
                    self.finish = choice.finish_reason or self.finish
        except Exception as exc:  # an error event or status: judged by the test
            self.error = repr(exc)

    @property
    def done(self) -> bool:
        return self.task.done()

    async def cancel(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


async def until(predicate, timeout: float, what: str):
    """The first truthy result of `predicate()` (run in a thread), polled every 0.2 s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := await asyncio.to_thread(predicate):
            return result
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _ongoing_totalling(total: int):
    """A predicate: Serve's per-replica ongoing counts once two replicas hold `total`."""
    def check() -> dict[str, int] | None:
        counts = ongoing_requests()
        return counts if len(counts) == 2 and sum(counts.values()) == total else None
    return check


MAX_PLACEMENT_TRIES = 16


async def one_stream_on_each_replica(client, holders: list[LiveStream],
                                     prompt: Callable[[], list[int]], max_tokens: int,
                                     duration_s: float) -> list[LiveStream]:
    """Streams started one at a time while only the holders run, each located by the replica
    whose ongoing count it raised, until each of the two replicas has one (extras are closed).
    Their length: `duration_s` at the token rate the holders see meanwhile, within
    [600, max_tokens]."""
    counts = await until(_ongoing_totalling(len(holders)), 60, "only the holders to run")
    start, tokens = time.monotonic(), sum(h.tokens for h in holders)
    await asyncio.sleep(1.0)
    rate = (sum(h.tokens for h in holders) - tokens) / len(holders) / (time.monotonic() - start)
    length = int(min(max_tokens, max(600, rate * duration_s)))
    placed: dict[str, LiveStream] = {}
    extras = []
    # Ray Serve's router picks the less loaded of two replicas from load figures it caches
    # briefly, so a burst can land on one replica well past the other's count (seen: 6 of 6
    # on one replica while the other held 3); give it room, the extras are closed below.
    for _ in range(MAX_PLACEMENT_TRIES):
        stream = LiveStream(client, prompt(), length)
        after = await until(_ongoing_totalling(sum(counts.values()) + 1), 30,
                             "the new stream to reach a replica")
        replica = next(r for r in after if after[r] > counts.get(r, 0))
        if replica in placed:
            extras.append(stream)
            await asyncio.sleep(0.5)  # lets the router's cached load figures catch up
        placed.setdefault(replica, stream)
        counts = after
        if len(placed) == 2:
            break
    assert len(placed) == 2, f"the router put every stream on one replica: {counts}"
    for stream in extras:
        await stream.cancel()
    return list(placed.values())
