"""The server's door over real HTTP (tiny random Llama behind the real app, uvicorn on a
loopback socket): quotas answer 429 with Retry-After and the x-ratelimit headers, every
response carries those headers, token reservations are settled with the real usage, slots
come back when clients leave, queued requests die at their x-request-timeout, and the
engine's fair queue receives the caller's tenant and priority."""
from __future__ import annotations

import asyncio
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from cormorant.config import CacheConfig, EngineConfig, SchedulerConfig
from cormorant.sampling_params import SamplingParams

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "server"))
from server_helpers import ServerThread  # noqa: E402

LONG = 2000  # tokens: a stream that surely outlives the test's next few requests
RATE_HEADERS = [f"x-ratelimit-{kind}-{what}" for what in ("requests", "tokens")
                for kind in ("limit", "remaining", "reset")]


class AppServer(ServerThread):
    """The server tests' ServerThread, as a context manager."""

    def __enter__(self) -> "AppServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def complete(self, prompt="Hello", max_tokens: int = 4, headers=None, **body
                 ) -> httpx.Response:
        return httpx.post(self.url + "/v1/completions", headers=headers, timeout=60,
                          json={"model": self.model, "prompt": prompt,
                                "max_tokens": max_tokens, **body})

    def remaining(self, what: str) -> int:
        """x-ratelimit-remaining-<what> as it stands (read from a response that charges
        nothing)."""
        return int(httpx.get(self.url + "/v1/models").headers[f"x-ratelimit-remaining-{what}"])

    def open_stream(self, client: httpx.Client, max_tokens: int, headers=None) -> "Stream":
        """A streaming request, open once its first token arrived."""
        request = client.build_request(
            "POST", self.url + "/v1/completions", headers=headers,
            json={"model": self.model, "prompt": [5, 6, 7], "max_tokens": max_tokens,
                  "stream": True, "ignore_eos": True})
        response = client.send(request, stream=True)
        lines = response.iter_lines()
        while not next(lines).startswith("data: {"):
            pass
        return Stream(response, lines)


class Stream:
    """An open SSE response. The line iterator must stay referenced: collecting it would
    close the connection, which the server rightly takes for a client that left."""

    def __init__(self, response: httpx.Response, lines) -> None:
        self.response = response
        self.lines = lines

    def close(self) -> None:
        self.response.close()


@pytest.fixture(scope="module")
def engine(tiny_llama):
    from cormorant.frontend.async_llm import AsyncLLM

    config = EngineConfig(model=tiny_llama, seed=0, cache=CacheConfig(num_blocks=512),
                          scheduler=SchedulerConfig(max_model_len=2048, max_num_seqs=2,
                                                    policy="fair"))
    llm = AsyncLLM.from_config(config)
    yield llm
    llm.shutdown()


def wait_until(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_rpm_429_carries_retry_after_and_headers(engine):
    with AppServer(engine, default_rpm=3, default_tpm=100_000) as server:
        ok = [server.complete() for _ in range(3)]
        refused = server.complete()
        models = httpx.get(server.url + "/v1/models")
    for response in ok:
        assert response.status_code == 200, response.text
        assert all(h in response.headers for h in RATE_HEADERS)
    assert [r.headers["x-ratelimit-remaining-requests"] for r in ok] == ["2", "1", "0"]
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert refused.json()["error"]["type"] == "rate_limit_error"
    assert 1 <= int(refused.headers["retry-after"]) <= 61
    assert all(h in refused.headers for h in RATE_HEADERS)
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    # Not only the generation routes: every response to a caller with quotas.
    assert models.status_code == 200 and models.headers["x-ratelimit-remaining-requests"] == "0"


def _greedy_first_token(engine, prompt: list[int]) -> int:
    async def generate() -> int:
        params = SamplingParams(max_tokens=1, temperature=0.0)
        async for out in engine.generate("probe", prompt, params):
            last = out
        return last.outputs[0].token_ids[0]
    return asyncio.run(generate())


def test_tokens_are_reserved_then_settled(engine):
    """prompt + max_tokens is held while a request runs; what it did not use comes back."""
    stop = _greedy_first_token(engine, [5, 6, 7])
    with AppServer(engine, default_tpm=300) as server:
        # Reserves 3 + 250 tokens, stops after one: 249 or so come back at settlement.
        short = server.complete([5, 6, 7], max_tokens=250, temperature=0.0,
                                stop_token_ids=[stop])
        assert short.status_code == 200, short.text
        assert short.json()["usage"]["completion_tokens"] <= 1
        assert short.headers["x-ratelimit-remaining-tokens"] == str(300 - 253)
        wait_until(lambda: server.remaining("tokens") >= 296)
        again = server.complete([5, 6, 7], max_tokens=250, temperature=0.0,
                                stop_token_ids=[stop])
        assert again.status_code == 200, again.text  # without the refund: 47 tokens left
        wait_until(lambda: server.remaining("tokens") >= 292)


def test_concurrency_slot_comes_back_when_the_client_leaves(engine):
    with AppServer(engine, default_max_concurrent=1) as server, \
            httpx.Client(timeout=60) as client:
        stream = server.open_stream(client, max_tokens=LONG)
        refused = server.complete()
        assert refused.status_code == 429 and "concurrent" in refused.text
        assert refused.headers["retry-after"] == "1"
        stream.close()
        wait_until(lambda: server.complete().status_code == 200)


def test_queued_request_dies_at_its_deadline(engine):
    with AppServer(engine) as server, httpx.Client(timeout=60) as client:
        running = [server.open_stream(client, max_tokens=LONG) for _ in range(2)]  # both slots
        started = time.monotonic()
        late = server.complete(max_tokens=4, headers={"x-request-timeout": "0.3"})
        elapsed = time.monotonic() - started
        assert late.status_code == 504, late.text
        assert late.json()["error"]["code"] == "deadline_exceeded"
        assert 0.25 <= elapsed < 5
        wait_until(lambda: engine.stats().num_waiting == 0)  # aborted: it left the queue
        for response in running:
            response.close()
        bad = server.complete(headers={"x-request-timeout": "soon"})
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_header"


def test_tenant_and_priority_reach_the_fair_queue(engine):
    """The anonymous caller's tenant, and x-request-priority, order the engine's queue."""
    with AppServer(engine) as server, httpx.Client(timeout=60) as client:
        running = [server.open_stream(client, max_tokens=LONG) for _ in range(2)]
        results: dict[str, float] = {}

        def send(name: str, priority: int) -> None:
            response = server.complete([9, 9, 9], max_tokens=2,
                                       headers={"x-request-priority": str(priority)})
            assert response.status_code == 200
            results[name] = time.monotonic()

        threads = [threading.Thread(target=send, args=(name, p))
                   for name, p in (("low", 5), ("high", -5))]
        threads[0].start()
        wait_until(lambda: engine.stats().num_waiting == 1)
        threads[1].start()
        wait_until(lambda: engine.stats().num_waiting == 2)
        waiting = engine.client.core.scheduler.waiting
        assert waiting.num_waiting_by_tenant() == {"anonymous": 2}
        assert waiting.peek().priority == -5
        for response in running:
            response.close()
        for thread in threads:
            thread.join(30)
    assert set(results) == {"low", "high"}


# ---- with real API keys (the app's own auth middleware, reading a key database) ----------

def test_each_key_has_its_own_quota_and_queue_share(engine, make_key, keys_db):
    """Quotas are per key (one key's 429 leaves another untouched), and the engine's fair
    queue sees each key's tenant and weight."""
    heavy = make_key("heavy", rpm=2)
    light = make_key("light", rpm=100, weight=3.0)
    with AppServer(engine, keys_db=str(keys_db.path), keys_refresh_s=0.0) as server:
        _per_key(engine, server, heavy, light)


def _per_key(engine, server: AppServer, heavy: str, light: str) -> None:
    model = server.model

    def complete(token: str, max_tokens: int = 2, stream: bool = False):
        return httpx.post(server.url + "/v1/completions", timeout=60,
                          headers={"Authorization": f"Bearer {token}"},
                          json={"model": model, "prompt": [5, 6, 7], "max_tokens": max_tokens,
                                "stream": stream, "ignore_eos": True})

    statuses = [complete(heavy).status_code for _ in range(3)]
    assert statuses == [200, 200, 429]
    ok = complete(light)
    assert ok.status_code == 200 and ok.headers["x-ratelimit-remaining-requests"] == "99"

    # Both slots busy, then one request of each key waits: the queue knows whose is whose.
    with httpx.Client(timeout=60) as client:
        running = []
        for _ in range(2):
            request = client.build_request(
                "POST", server.url + "/v1/completions",
                headers={"Authorization": f"Bearer {light}"},
                json={"model": model, "prompt": [5, 6, 7], "max_tokens": LONG,
                      "stream": True, "ignore_eos": True})
            response = client.send(request, stream=True)
            lines = response.iter_lines()
            while not next(lines).startswith("data: {"):
                pass
            running.append((response, lines))
        waiter = threading.Thread(target=complete, args=(light,))
        waiter.start()
        wait_until(lambda: engine.stats().num_waiting == 1)
        waiting = engine.client.core.scheduler.waiting
        (tenant,) = waiting.num_waiting_by_tenant()
        head = waiting.peek()
        assert head.tenant == tenant and tenant != "anonymous" and head.weight == 3.0
        for response, _ in running:
            response.close()
        waiter.join(30)
