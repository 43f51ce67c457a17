"""Admission control on its own: budgets, the KV-block estimate, the measured drain rate and the
Retry-After it gives, deadlines, and the ticket's life (started, released, expired).

The engine's state comes in as the one EngineStats value (what AsyncLLM.stats() returns) and
time from an injected clock, so every number here is exact."""
from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest

from cormorant.engine.messages import EngineStats
from cormorant.gateway.engine_admission import (AdmissionConfig, AdmissionController, DrainMeter,
                                                Refusal, Ticket, parse_priority, parse_timeout)


class FakeClock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def Stats(**fields) -> EngineStats:  # noqa: N802 - reads like the value it builds
    return EngineStats(**{"num_free_blocks": 1000, "num_total_blocks": 1000, **fields})


@dataclass
class Output:
    """What a ticket reads from a frontend RequestOutput."""

    num_prompt_tokens: int
    num_generated_tokens: int


def controller(stats: Stats, clock: FakeClock | None = None, **config) -> AdmissionController:
    return AdmissionController(AdmissionConfig(**config), lambda: stats, clock or FakeClock())


def assert_503(result, retry_after: int | None = None) -> Refusal:
    assert isinstance(result, Refusal) and result.status == 503, result
    assert result.code == "server_overloaded"
    assert int(result.headers["retry-after"]) >= 1
    if retry_after is not None:
        assert result.headers["retry-after"] == str(retry_after)
    return result


def test_waiting_budget_counts_both_views():
    stats = Stats()
    ctl = controller(stats, max_waiting_requests=3)
    tickets = [ctl.admit([10]) for _ in range(3)]
    assert all(isinstance(t, Ticket) for t in tickets)
    assert_503(ctl.admit([10]))
    tickets[0].observe(0, Output(10, 1))  # started: its slot is free again
    assert isinstance(ctl.admit([10]), Ticket)
    stats.num_waiting = 5  # the engine's view is larger (preempted requests went back)
    assert_503(ctl.admit([10]))


def test_empty_queue_always_admits():
    ctl = controller(Stats(num_free_blocks=1, num_total_blocks=4), max_waiting_prompt_tokens=10)
    assert isinstance(ctl.admit([5000]), Ticket)  # bigger than every budget, but first
    assert_503(ctl.admit([1]))


def test_kv_blocks_of_the_queue():
    stats = Stats(num_free_blocks=10, num_total_blocks=100)
    ctl = controller(stats, block_size=16, max_waiting_kv_caches=1.0)
    first = ctl.admit([16 * 100])  # 100 blocks queued
    assert isinstance(first, Ticket)
    # 100 + 10 blocks fit in 10 free + 1 cache (100); 100 + 11 do not.
    assert isinstance(ctl.admit([16 * 10]), Ticket)
    refusal = assert_503(ctl.admit([1]))
    assert "KV blocks" in refusal.message


def test_drain_meter():
    clock = FakeClock(0.0)
    meter = DrainMeter(window_s=10.0, clock=clock)
    assert meter.rate() is None
    meter.record(100)
    assert meter.rate() is None  # one start opens the interval, it measures nothing yet
    for _ in range(4):
        clock.now += 1.0
        meter.record(50)
    assert meter.rate() == pytest.approx(50.0)  # 200 tokens over 4 s
    clock.now += 4.0  # stalled: the rate decays rather than freezing
    assert meter.rate() == pytest.approx(25.0)
    clock.now += 20.0
    assert meter.rate() is None  # everything left the window


def _measured(ctl: AdmissionController, clock: FakeClock, tokens_per_s: float) -> None:
    """Make the controller measure `tokens_per_s` from real ticket starts."""
    for _ in range(6):
        ticket = ctl.admit([int(tokens_per_s)])
        clock.now += 1.0
        ticket.observe(0, Output(int(tokens_per_s), 1))


def test_expected_wait_and_retry_after_from_the_drain_rate():
    clock = FakeClock()
    stats = Stats()
    ctl = controller(stats, clock, max_queue_delay_s=10.0)
    _measured(ctl, clock, 100.0)
    assert ctl.meter.rate() == pytest.approx(100.0)
    stats.num_waiting, stats.num_waiting_prompt_tokens = 4, 1000  # 10 s of backlog: ok
    assert isinstance(ctl.admit([50]), Ticket)
    stats.num_waiting_prompt_tokens = 1450  # 14.5 s: 4.5 s too much
    assert_503(ctl.admit([50]), retry_after=5)


def test_deadline_shorter_than_the_queue():
    clock = FakeClock()
    stats = Stats()
    ctl = controller(stats, clock, max_queue_delay_s=60.0)
    _measured(ctl, clock, 100.0)
    stats.num_waiting, stats.num_waiting_prompt_tokens = 3, 500  # about 5 s to start
    assert_503(ctl.admit([10], deadline_s=2.0), retry_after=3)
    assert isinstance(ctl.admit([10], deadline_s=6.0), Ticket)
    assert isinstance(ctl.admit([10]), Ticket)


def test_retry_after_falls_back_without_a_rate():
    ctl = controller(Stats(num_waiting=1), max_waiting_requests=1, retry_after_s=7)
    assert_503(ctl.admit([3]), retry_after=7)


def test_ticket_release_and_usage():
    ctl = controller(Stats())
    ticket = ctl.admit([10, 20, 30])
    used: list[int] = []
    ticket.on_release(used.append)
    ticket.observe(1, Output(20, 3))
    ticket.observe(1, Output(20, 7))  # cumulative: the latest counts
    assert ctl.num_waiting == 2 and ctl.num_waiting_prompt_tokens == 40
    ticket.release()
    ticket.release()
    assert used == [27]
    assert ctl.num_waiting == 0 and ctl.num_waiting_prompt_tokens == 0


def test_deadline_expires_only_queued_requests():
    async def scenario():
        ctl = AdmissionController(AdmissionConfig(), Stats)  # real monotonic time
        queued, started = ctl.admit([10], deadline_s=0.05), ctl.admit([10], deadline_s=0.05)
        untimed = ctl.admit([10])
        expired: list[str] = []
        for name, ticket in (("queued", queued), ("started", started), ("untimed", untimed)):
            ticket.on_expire(lambda name=name: expired.append(name))
        started.observe(0, Output(10, 1))
        await asyncio.sleep(0.15)
        queued.release()
        return expired, queued.is_expired, started.is_expired

    assert asyncio.run(scenario()) == (["queued"], True, False)


def test_parse_priority():
    assert parse_priority(None) == 0 and parse_priority("-3") == -3
    for bad in ("1.5", "high", str(10**7)):
        with pytest.raises(ValueError):
            parse_priority(bad)


def test_parse_timeout():
    assert parse_timeout(None) is None
    assert parse_timeout("2.5") == 2.5
    for bad in ("0", "-1", "nan", "inf", "soon"):
        with pytest.raises(ValueError):
            parse_timeout(bad)
