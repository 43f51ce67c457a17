"""Timing: a wrong key that differs from a real one at its first byte takes as long to refuse
as one that differs at its last byte (Welch's t-test over real HTTP round trips).

A test that can never fail proves nothing, so the same harness first runs against a
deliberately leaky comparator (early exit plus a little work per matching character) and
must detect it; only then is the real middleware held to "no detectable difference".
"""
from __future__ import annotations

import math
import random
import statistics
import time

import httpx

from cormorant.gateway.auth.keys import Principal
from cormorant.gateway.auth.middleware import Authenticator

SAMPLES = 400  # per group; interleaved at random so drift hits both groups alike
TRIM = 0.1  # drop the slowest 10% of each group: GC and scheduler spikes, not the code
ALPHA = 1e-3


def welch(a: list[float], b: list[float]) -> tuple[float, float]:
    """(t, two-sided p). With hundreds of samples the t distribution is the normal one to
    well under the precision we need, so p comes from erfc (no scipy dependency)."""
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    t = (statistics.fmean(a) - statistics.fmean(b)) / math.sqrt(va + vb)
    return t, math.erfc(abs(t) / math.sqrt(2))


def trimmed(samples: list[float]) -> list[float]:
    return sorted(samples)[: int(len(samples) * (1 - TRIM))]


def flip(ch: str) -> str:
    return "B" if ch == "A" else "A"


def measure(url: str, first: str, last: str) -> tuple[list[float], list[float]]:
    order = [0] * SAMPLES + [1] * SAMPLES
    random.Random(0).shuffle(order)
    times: tuple[list[float], list[float]] = ([], [])
    with httpx.Client(base_url=url, timeout=30) as client:  # one keep-alive connection
        for _ in range(50):  # warm up the connection and both code paths
            client.get("/v1/models", headers={"Authorization": f"Bearer {first}"})
        for group in order:
            token = (first, last)[group]
            start = time.perf_counter()
            r = client.get("/v1/models", headers={"Authorization": f"Bearer {token}"})
            times[group].append(time.perf_counter() - start)
            assert r.status_code == 401
    return trimmed(times[0]), trimmed(times[1])


class LeakyAuthenticator(Authenticator):
    """The bug the test is for: compare character by character, stop at the first mismatch."""

    def __init__(self, real: str) -> None:
        super().__init__()
        self.real = real

    def authenticate(self, token: str) -> Principal | None:
        for a, b in zip(token, self.real):
            if a != b:
                return None
            sum(range(1500))  # ~20 us per matching character: ~1 ms over a whole token
        return Principal.static() if token == self.real else None


def test_harness_detects_a_leaky_comparison(gateway_server, make_key):
    token = make_key()
    server = gateway_server()
    server_app = server.server.config.app  # AuthMiddleware: swap in the leaky authenticator
    server_app.authenticator = LeakyAuthenticator(token)
    first, last = flip(token[0]) + token[1:], token[:-1] + flip(token[-1])
    a, b = measure(server.url, first, last)
    t, p = welch(a, b)
    assert p < ALPHA and t < 0, (t, p, statistics.fmean(a), statistics.fmean(b))


def test_first_and_last_byte_mismatches_take_the_same_time(gateway_server, make_key):
    token = make_key()
    server = gateway_server()
    first, last = flip(token[0]) + token[1:], token[:-1] + flip(token[-1])
    a, b = measure(server.url, first, last)
    t, p = welch(a, b)
    mean_a, mean_b = statistics.fmean(a) * 1e6, statistics.fmean(b) * 1e6
    assert p > ALPHA, f"t={t:.2f} p={p:.2g}: first-byte {mean_a:.1f}us, last-byte {mean_b:.1f}us"
