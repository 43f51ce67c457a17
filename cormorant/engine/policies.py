"""Scheduling policies: the waiting queue's order, chosen by SchedulerConfig.policy.

"fifo" (FifoQueue): first come, first served. "fair" (FairQueue): a weighted fair queue
across tenants, with priority inside a tenant. Both implement `WaitingQueue`, the order in
which the scheduler admits waiting sequences. Background sequences (batch jobs, priority
>= engine.types.BATCH_PRIORITY) wait in a FifoQueue of their own beside the policy's queue,
and are admitted only when it is empty (engine.scheduler).

FairQueue: start-time fair queueing with virtual time: every tenant has a virtual clock
`vtime`, which serving one of its sequences advances by cost / weight (cost: the tokens the
sequence asked for, prompt plus max_tokens). The tenant whose head would finish first in
virtual time goes next, so one heavy tenant cannot starve the others. A tenant that was idle
restarts at the global virtual time (that of the last sequence served), so idleness earns no
credit to burst with later. Inside a tenant, lower `priority` first (vLLM's convention), then
arrival order. Sequences pushed to the front (preempted ones, released n > 1 siblings) were
admitted once already and come back before anything else, in the order the scheduler pushed
them. Sequences need `tenant`, `priority` and `weight` (engine.sequence has them).
The queues live in the engine thread: no locking. Imports the standard library and
engine.sequence.
"""
from __future__ import annotations

import heapq
import itertools
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from cormorant.engine.sequence import Sequence


class WaitingQueue(Protocol):
    """The admission order of waiting sequences. FIFO by default; the production layer can
    use the fair queue across tenants. `push_front` is for sequences that were already
    admitted once (preempted ones, released siblings) and should be resumed first."""

    def push(self, seq: Sequence) -> None: ...
    def push_front(self, seq: Sequence) -> None: ...
    def peek(self) -> Sequence: ...
    def pop(self) -> Sequence: ...
    def remove(self, seq: Sequence) -> bool: ...
    def __len__(self) -> int: ...
    def __iter__(self) -> Iterator[Sequence]: ...


class FifoQueue:
    """First come, first served. An ordered dict gives O(1) push_front and remove (aborts)."""

    def __init__(self) -> None:
        self._seqs: OrderedDict[Sequence, None] = OrderedDict()

    def push(self, seq: Sequence) -> None:
        self._seqs[seq] = None

    def push_front(self, seq: Sequence) -> None:
        self._seqs[seq] = None
        self._seqs.move_to_end(seq, last=False)

    def peek(self) -> Sequence:
        return next(iter(self._seqs))

    def pop(self) -> Sequence:
        return self._seqs.popitem(last=False)[0]

    def remove(self, seq: Sequence) -> bool:
        if seq not in self._seqs:
            return False
        del self._seqs[seq]
        return True

    def __len__(self) -> int:
        return len(self._seqs)

    def __iter__(self) -> Iterator[Sequence]:
        return iter(self._seqs)


class FairSeq(Protocol):
    tenant: str
    priority: int
    weight: float
    num_tokens: int

    @property
    def sampling_params(self) -> Any: ...


def token_cost(seq: FairSeq) -> float:
    """The work a sequence asked for: its tokens so far plus what it may still generate."""
    max_tokens = getattr(seq.sampling_params, "max_tokens", None) or 0
    return float(max(1, seq.num_tokens + max_tokens))


class _Tenant:
    __slots__ = ("heap", "vtime", "weight", "num_live")

    def __init__(self, vtime: float) -> None:
        self.heap: list[list] = []  # [priority, order, seq, is_live]: removal marks dead
        self.vtime = vtime
        self.weight = 1.0
        self.num_live = 0

    def head(self) -> list | None:
        while self.heap and not self.heap[0][3]:
            heapq.heappop(self.heap)
        return self.heap[0] if self.heap else None


class FairQueue:
    def __init__(self, cost: Callable[[FairSeq], float] = token_cost) -> None:
        self.cost = cost
        self._front: deque = deque()
        self._tenants: dict[str, _Tenant] = {}
        self._entries: dict[Any, list | None] = {}  # seq -> its heap entry; None: in front
        self._order = itertools.count()
        self._vtime = 0.0  # the virtual start time of the sequence served last
        self._next: str | None = None  # cached choice of tenant; None: recompute

    # -- the WaitingQueue protocol ----------------------------------------------------------
    def push(self, seq: FairSeq) -> None:
        assert seq not in self._entries, "a sequence waits twice"
        tenant = self._tenants.get(seq.tenant)
        if tenant is None:
            tenant = self._tenants[seq.tenant] = _Tenant(self._vtime)
        elif tenant.num_live == 0:
            tenant.vtime = max(tenant.vtime, self._vtime)  # no credit for idle time
        if seq.weight > 0:
            tenant.weight = seq.weight  # the latest request's weight is the tenant's
        entry = [seq.priority, next(self._order), seq, True]
        heapq.heappush(tenant.heap, entry)
        tenant.num_live += 1
        self._entries[seq] = entry
        self._next = None

    def push_front(self, seq: FairSeq) -> None:
        assert seq not in self._entries, "a sequence waits twice"
        self._front.appendleft(seq)
        self._entries[seq] = None

    def peek(self) -> FairSeq:
        if self._front:
            return self._front[0]
        tenant = self._tenants[self._choose()]
        return tenant.head()[2]  # type: ignore[index]

    def pop(self) -> FairSeq:
        if self._front:
            seq = self._front.popleft()
            del self._entries[seq]
            return seq
        name = self._choose()
        tenant = self._tenants[name]
        tenant.head()  # drops dead entries from the top
        _, _, seq, _ = heapq.heappop(tenant.heap)
        tenant.num_live -= 1
        del self._entries[seq]
        self._vtime = tenant.vtime
        tenant.vtime += self.cost(seq) / tenant.weight
        if tenant.num_live == 0 and tenant.vtime <= self._vtime:
            del self._tenants[name]
        self._next = None
        return seq

    def remove(self, seq: FairSeq) -> bool:
        if seq not in self._entries:
            return False
        entry = self._entries.pop(seq)
        if entry is None:
            self._front.remove(seq)
            return True
        entry[3] = False
        tenant = self._tenants[seq.tenant]
        tenant.num_live -= 1
        if len(tenant.heap) > 2 * tenant.num_live + 16:  # mostly aborted: compact
            tenant.heap = [e for e in tenant.heap if e[3]]
            heapq.heapify(tenant.heap)
        self._next = None
        return True

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[FairSeq]:
        """Every waiting sequence once; not in service order."""
        return iter(list(self._entries))

    # -- introspection (metrics, tests) ------------------------------------------------------
    def num_waiting_by_tenant(self) -> dict[str, int]:
        # list(): a copy taken atomically, since another thread (metrics) may call this.
        return {name: t.num_live for name, t in list(self._tenants.items()) if t.num_live}

    # -- choosing ---------------------------------------------------------------------------
    def _choose(self) -> str:
        """The tenant whose head finishes first in virtual time (ties: earlier arrival).
        A linear scan: the tenants with waiting work are few, and the choice is cached
        until the queue changes. Idle tenants whose clock fell behind are dropped here."""
        if self._next is not None:
            return self._next
        best: tuple[float, int] | None = None
        stale = []
        for name, tenant in self._tenants.items():
            head = tenant.head()
            if head is None:
                if tenant.vtime <= self._vtime:
                    stale.append(name)
                continue
            key = (tenant.vtime + self.cost(head[2]) / tenant.weight, head[1])
            if best is None or key < best:
                best, self._next = key, name
        for name in stale:
            del self._tenants[name]
        if self._next is None:
            raise IndexError("peek/pop from an empty FairQueue")
        return self._next


POLICIES = {"fifo": FifoQueue, "fair": FairQueue}


def waiting_queue(policy: str) -> WaitingQueue:
    """The waiting queue of SchedulerConfig.policy."""
    try:
        return POLICIES[policy]()
    except KeyError:
        raise ValueError(f"unknown scheduling policy {policy!r}; "
                         f"expected one of {sorted(POLICIES)}") from None
