"""xgrammar's JSON matchers in a process of their own, beside the engine loop's GIL.

On a GPU the engine loop of a 256-row decode step is host-bound: its Python is the step.
xgrammar's batched accept holds the GIL for its whole call (~0.7 ms a step at 256 rows on the
H100 host), so in a thread it either blocks the loop or waits on it; its fill releases the GIL,
but needs the accepts first. Here both run in a child process: the loop (through the mask
worker thread, GuidanceBackend) sends the step's tokens and the rows to fill, and reads back
the accepted flags and the bits. Opt-in (CORMORANT_GRAMMAR_PROCESS=1): on an H200 (b1s,
2026-12-06) it gave 0.90 of the unconstrained rate against 0.91-0.93 for the default, as its
two round trips a step are serial and the worker's packing still needs the GIL.

The child is a plain `python -m cormorant.text.xgrammar_process --fd N` (no multiprocessing:
nothing pickled), joined by a socket pair carrying msgpack maps. The parent sends the
tokenizer (xgrammar's own JSON of it) first; then one request, one reply at a time:

- request: `g` [[grammar id, compiled grammar JSON]] to keep, `gd` [grammar ids] to drop,
  `n` [[matcher id, grammar id]] to make, `d` [matcher ids] to drop, `r` [[matcher id,
  tokens]] to roll back, `a` / `t` matcher ids and their tokens to accept, `f` matcher ids
  whose next-token bitmasks to fill, in that order;
- reply: `a` one byte a accepted token (1) or rejected (0), `f` the byte length of the
  bitmask rows of `f` ([len(f), ceil(V / 32)] int32, little-endian), which follow as a raw
  message of their own (so the parent can read them straight into a buffer of its choice:
  pinned memory on a GPU), `x` the error text of a failed request (whose later parts did
  not run).

The parent compiles the grammars (GuidanceBackend's cache) and sends them serialized once.
The child exits when the parent's end of the socket closes.
"""
from __future__ import annotations

import itertools
import logging
import subprocess
import sys
import threading
import weakref
from multiprocessing.connection import Connection

from cormorant.child_process import child_connection, spawn
from cormorant.text.xgrammar_json import clear_spare_bits
from typing import Any, Callable

import msgpack

log = logging.getLogger(__name__)
START_TIMEOUT_S = 120.0  # importing xgrammar imports torch: a few seconds on a cold disk


def _pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def _unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


# --- the child ----------------------------------------------------------------------------------
class _Matchers:
    """The child's state: compiled grammars and matchers by id; applies one request."""

    def __init__(self, init: dict) -> None:
        import numpy as np
        import xgrammar as xgr

        self.np, self.xgr = np, xgr
        self.info = xgr.TokenizerInfo.deserialize_json(init["tokenizer"])
        self.vocab_size = int(init["vocab_size"])
        self.words = (self.vocab_size + 31) // 32
        self.many_rows = int(init["many_rows"])
        self.batchers = (xgr.BatchGrammarMatcher(max_threads=1),
                         xgr.BatchGrammarMatcher(max_threads=int(init["threads"])))
        self.grammars: dict[int, Any] = {}
        self.matchers: dict[int, Any] = {}
        self.bits = np.empty((0, self.words), dtype=np.int32)  # sent before the next request

    def apply(self, req: dict) -> dict:
        for gid, text in req.get("g", ()):
            self.grammars[gid] = self.xgr.CompiledGrammar.deserialize_json(text, self.info)
        for gid in req.get("gd", ()):
            self.grammars.pop(gid, None)  # matchers made from it keep it alive
        for mid, gid in req.get("n", ()):
            self.matchers[mid] = self.xgr.GrammarMatcher(self.grammars[gid])
        for mid in req.get("d", ()):
            self.matchers.pop(mid, None)
        for mid, num_tokens in req.get("r", ()):
            self.matchers[mid].rollback(num_tokens)
        reply: dict[str, Any] = {}
        if req.get("a"):
            matchers = [self.matchers[mid] for mid in req["a"]]
            accepted = self.xgr.BatchGrammarMatcher.batch_accept_token(matchers, req["t"])
            reply["a"] = bytes(bytearray(accepted))
        if req.get("f"):
            matchers = [self.matchers[mid] for mid in req["f"]]
            if len(self.bits) < len(matchers):
                self.bits = self.np.empty((len(matchers), self.words), dtype=self.np.int32)
            bits = self.bits[:len(matchers)]
            batcher = self.batchers[len(matchers) >= self.many_rows]
            batcher.batch_fill_next_token_bitmask(matchers, bits)
            clear_spare_bits(bits, self.vocab_size)
            reply["f"] = bits.nbytes
            reply["bits"] = bits.astype("<i4", copy=False)
        return reply


def main(argv: list[str] | None = None) -> int:
    conn = child_connection(argv, "grammar", __doc__.splitlines()[0])
    try:
        state = _Matchers(_unpack(conn.recv_bytes()))
        conn.send_bytes(_pack({"ready": True}))
        while True:
            req = _unpack(conn.recv_bytes())
            try:
                reply = state.apply(req)
            except Exception as exc:  # noqa: BLE001 (a bad request fails alone)
                reply = {"x": f"{type(exc).__name__}: {exc}"}
            bits = reply.pop("bits", None)
            conn.send_bytes(_pack(reply))
            if bits is not None:
                conn.send_bytes(bits)
    except (EOFError, BrokenPipeError, ConnectionResetError):
        return 0  # the parent went away


# --- the parent's handle -------------------------------------------------------------------------
class GrammarProcessError(RuntimeError):
    """The grammar process failed or went away; its matchers are lost."""


class GrammarProcess:
    """The child process and its protocol; thread-safe (one request at a time). Grammars
    and matchers are registered here and travel with the next request."""

    def __init__(self, tokenizer_json: str, vocab_size: int, threads: int,
                 many_rows: int) -> None:
        self.process, self._conn = spawn("cormorant.text.xgrammar_process")
        self._lock = threading.Lock()  # one request at a time
        self._queued_lock = threading.Lock()  # the registrations below
        self._ids = itertools.count()
        self._grammars: list[list] = []
        self._dropped_grammars: list[int] = []
        self._new: list[list[int]] = []
        self._dropped: list[int] = []
        self.alive = True
        try:
            self._conn.send_bytes(_pack({"tokenizer": tokenizer_json, "vocab_size": vocab_size,
                                         "threads": threads, "many_rows": many_rows}))
            if not self._conn.poll(START_TIMEOUT_S):
                raise GrammarProcessError("the grammar process did not start in time")
            self._conn.recv_bytes()
        except EOFError:
            self.close()
            raise GrammarProcessError("the grammar process exited while starting") from None
        except BaseException:
            self.close()
            raise
        finalizer = weakref.finalize(self, _close, self.process, self._conn)
        finalizer.atexit = True

    def _queue(self, name: str, item: Any) -> None:
        """Append to the registration list `name`, sent with the next request (any thread)."""
        with self._queued_lock:
            getattr(self, name).append(item)

    def _register(self, name: str, what: Any) -> int:
        """A new id for `what`, queued as [id, what] on the list `name`."""
        new_id = next(self._ids)
        self._queue(name, [new_id, what])
        return new_id

    def add_grammar(self, compiled_json: str) -> int:
        """Register a compiled grammar (xgrammar's JSON of it); its id."""
        return self._register("_grammars", compiled_json)

    def drop_grammar(self, gid: int) -> None:
        self._queue("_dropped_grammars", gid)

    def new_matcher(self, gid: int) -> int:
        """A matcher of grammar `gid`; its id."""
        return self._register("_new", gid)

    def drop_matcher(self, mid: int) -> None:
        """Forget a matcher (at the next request; called from finalizers)."""
        self._queue("_dropped", mid)

    def call(self, accept: list[int] = (), tokens: list[int] = (), fill: list[int] = (),
             rollback: list[list[int]] = (), into: Callable[[int], Any] | None = None
             ) -> tuple[bytes, bytes | memoryview]:
        """One request: (accepted flags of `accept`, the bitmask rows of `fill`). into: given
        the rows' byte length, a writable buffer at least that long to read them into (its
        first bytes are returned, as a memoryview); by default a new bytes object."""
        with self._lock:
            if not self.alive:
                raise GrammarProcessError("the grammar process is gone")
            with self._queued_lock:
                req = {"g": self._grammars, "gd": self._dropped_grammars, "n": self._new,
                       "d": self._dropped, "r": list(rollback), "a": list(accept),
                       "t": list(tokens), "f": list(fill)}
                self._grammars, self._dropped_grammars, self._new, self._dropped = \
                    [], [], [], []
            try:
                self._conn.send_bytes(_pack(req))
                reply = _unpack(self._conn.recv_bytes())
                bits: bytes | memoryview = b""
                if reply.get("f"):
                    if into is None:
                        bits = self._conn.recv_bytes()
                    else:
                        buffer = into(reply["f"])
                        size = self._conn.recv_bytes_into(buffer)
                        bits = memoryview(buffer).cast("B")[:size]
            except (EOFError, OSError) as exc:
                self.alive = False
                raise GrammarProcessError(f"the grammar process went away: {exc}") from None
        if reply.get("x"):
            raise GrammarProcessError(f"the grammar process refused a request: {reply['x']}")
        return reply.get("a", b""), bits

    def close(self) -> None:
        self.alive = False
        _close(self.process, self._conn)


def _close(process: subprocess.Popen, conn: Connection) -> None:
    """Close our end (the child then exits), and reap it."""
    try:
        conn.close()
    except OSError:
        pass
    try:
        process.wait(5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class RemoteMatcher:
    """One sequence's xgrammar matcher, living in the grammar process (a GrammarMatcher for
    engine.structured; GuidanceBackend batches the advances and fills of many)."""

    def __init__(self, process: GrammarProcess, gid: int, stop_ids: frozenset[int]) -> None:
        self.process = process
        self.mid = process.new_matcher(gid)
        self.stop_ids = stop_ids
        self.ended = False  # accepted a stop token: only the end may follow
        weakref.finalize(self, process.drop_matcher, self.mid)

    def took(self, token_id: int, accepted: bool) -> None:
        self.ended = self.ended or (accepted and token_id in self.stop_ids)

    def _call(self, **request: Any) -> tuple[bytes, Any] | None:
        """One request for this matcher alone; None if the process failed (logged: the
        sequence then ends)."""
        try:
            return self.process.call(**request)
        except GrammarProcessError as exc:
            log.error("%s: a sequence ends", exc)
            self.ended = True
            return None

    def accept(self, token_id: int) -> bool:
        """False also when the process failed: the sequence then ends."""
        reply = self._call(accept=[self.mid], tokens=[token_id])
        if reply is None:
            return False
        accepted = reply[0][0] == 1
        self.took(token_id, accepted)
        return accepted

    def rollback(self, num_tokens: int) -> None:
        if self._call(rollback=[[self.mid, num_tokens]]) is not None and num_tokens:
            self.ended = False  # the stop token is the last a matcher takes

    def is_terminated(self) -> bool:
        return self.ended


if __name__ == "__main__":
    sys.exit(main())
