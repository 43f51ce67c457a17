"""The grammar backend of one model: llguidance matchers, and xgrammar for JSON schemas.

Implements engine.structured's GrammarBackend. llguidance validates every constraint and runs
regexes, choices and grammars; a JSON schema or json_object that xgrammar enforces exactly
(text.xgrammar_json) runs on xgrammar, whose masks are ~10-20x cheaper on complete JSON
(`CORMORANT_JSON_GRAMMAR=llguidance` keeps JSON on llguidance). llguidance's tokenizer
(about half a second for a 49k vocabulary) is built on the first constrained request;
xgrammar's (~0.3 s) in a background thread when the backend is made. Each distinct spec's
grammar text is made and validated once and kept in a bounded LRU cache keyed by the spec's
digest (text.grammar.spec_digest), with its compiled xgrammar grammar (compiled in that
thread, shared by the spec's matchers); each sequence builds its own matcher. Masks of a
step are filled together into one [rows, ceil(vocab / 32)] int32 array, handed to the
ScheduledBatch as a byte view (no copy): llguidance's rows on its threads, xgrammar's in one
batched call (hence `fill_at_once`); both release the GIL while they fill. With
`process=True` or CORMORANT_GRAMMAR_PROCESS=1 (opt-in: on an H200 it measured no better than
the default) xgrammar's matchers live in a grammar process of their own
(text.xgrammar_process), so their advances, which hold the GIL, run beside the loop too
(`advances_elsewhere`); should that process fail, its sequences end and later ones run in
this process.

Imports llguidance, numpy and text.* only (xgrammar lazily); never torch or engine code.
"""
from __future__ import annotations

import importlib.util
import logging
import os
import threading
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, Callable

import llguidance
import llguidance.hf
import llguidance.numpy as llg_numpy
import numpy as np

from cormorant.sampling_params import StructuredOutputs
from cormorant.text.grammar import GrammarLimits, spec_digest, validate
from cormorant.text.tokenizer import Tokenizer
from cormorant.text.xgrammar_json import clear_spare_bits, json_grammar, schema_text
from cormorant.text.xgrammar_process import GrammarProcess, GrammarProcessError, RemoteMatcher

log = logging.getLogger(__name__)
# xgrammar's batched fill starts its threads on every call (`mask_probe.py --thread-sweep`,
# b1s's bounded schema): on the H100 host (16 cores) 256 rows took 1.01 ms with 1 thread,
# 0.71 with 4, 1.40 with 15; 64 rows 0.29 ms with 1 or 4. On a 2-core VM 1 was best.
XGR_MANY_ROWS = 128  # from this many rows, up to 4 threads
MASK_BUFFERS = 3  # bitmask arrays reused in turn (_Ring)
# How long a spec's first request waits for its xgrammar compile (b1s's 10 fields: 11-16 ms,
# plus 0.3 s for the tokenizer once); a spec compiled slower runs on llguidance.
XGR_COMPILE_WAIT_S = 0.5


class _Llg:
    """An llguidance matcher as a GrammarMatcher."""

    def __init__(self, ll: llguidance.LLMatcher) -> None:
        self.ll = ll

    def accept(self, token_id: int) -> bool:
        return self.ll.consume_token(token_id)

    def rollback(self, num_tokens: int) -> None:
        self.ll.rollback(num_tokens)

    def is_terminated(self) -> bool:
        return self.ll.is_stopped()


class _Xgr:
    """An xgrammar matcher as a GrammarMatcher. It ends when the stop token is accepted (after
    a JSON object closes, the mask allows only that), one step later than llguidance, which
    stops as soon as nothing but the end may follow."""

    def __init__(self, matcher: Any) -> None:
        self.xg = matcher
        # Kept here, not asked of xgrammar: each of its calls releases and retakes the GIL,
        # which in the mask worker means waiting for the step loop (GuidanceBackend.advance).
        self.ended = False

    def accept(self, token_id: int) -> bool:
        accepted = self.xg.accept_token(token_id)
        self.ended = self.xg.is_terminated()
        return accepted

    def rollback(self, num_tokens: int) -> None:
        self.xg.rollback(num_tokens)
        self.ended = self.xg.is_terminated()

    def is_terminated(self) -> bool:
        return self.ended


class GuidanceMatcher:
    """One sequence's grammar state (engine.structured.GrammarMatcher), built on first use
    (`state`): the first mask fill, in the engine's mask worker while a forward runs, rather
    than when the request is added (a burst of 256 requests would hold the engine loop for
    256 compiles of ~2 ms before its first step)."""

    def __init__(self, build: Callable[[], _Llg | _Xgr | RemoteMatcher],
                 xgrammar: bool = False) -> None:
        self._build: Callable[[], _Llg | _Xgr | RemoteMatcher] | None = build
        self._state: _Llg | _Xgr | RemoteMatcher | None = None
        self.xgrammar = xgrammar  # built on xgrammar, unless it refuses the grammar

    @property
    def state(self) -> _Llg | _Xgr | RemoteMatcher:
        if self._state is None:
            assert self._build is not None
            self._state, self._build = self._build(), None
        return self._state

    def accept(self, token_id: int) -> bool:
        return self.state.accept(token_id)

    def rollback(self, num_tokens: int) -> None:
        self.state.rollback(num_tokens)

    @property
    def is_terminated(self) -> bool:
        return self.state.is_terminated()


class _Entry:
    """A cached spec: its llguidance grammar text, and the schema xgrammar takes (None: it
    runs on llguidance) with its compile, once started (a Future of the compiled grammar;
    None as its result: xgrammar refused it)."""

    def __init__(self, text: str, xgr_schema: str | None, compact: bool) -> None:
        self.text = text
        self.xgr_schema = xgr_schema
        self.compact = compact
        self.compiled: Future | None = None
        self.on_xgrammar: bool | None = None  # decided by the spec's first matcher, for good
        self.remote_id: int | None = None  # its id in the grammar process, once sent there


class GuidanceBackend:
    """The grammar engines for one tokenizer: grammar cache, matchers, batched masks."""

    def __init__(self, tokenizer: Tokenizer, limits: GrammarLimits = GrammarLimits(),
                 json_engine: str | None = None, process: bool = False,
                 host_buffer: Callable[[int], Any] | None = None) -> None:
        """process: xgrammar's matchers in a grammar process (CORMORANT_GRAMMAR_PROCESS=0 or
        1 overrides). host_buffer: makes a writable byte buffer of a given length for the
        process's bits to land in (the builder's pinned memory on a GPU, so the runner's
        copy to the device starts from it); default: plain bytes."""
        self.tokenizer = tokenizer
        self.limits = limits
        self.vocab_size = tokenizer.vocab_size
        engine = json_engine or os.environ.get("CORMORANT_JSON_GRAMMAR", "xgrammar")
        if engine not in ("xgrammar", "llguidance"):
            raise ValueError(f"json grammar engine {engine!r}: xgrammar or llguidance")
        if engine == "xgrammar" and importlib.util.find_spec("xgrammar") is None:
            log.warning("xgrammar is not installed: JSON constraints run on llguidance")
            engine = "llguidance"
        self.json_engine = engine
        self._stop_ids = frozenset(tokenizer.eos_token_ids)  # xgrammar's stop tokens
        self._ll_tokenizer: llguidance.LLTokenizer | None = None
        self._executor: llguidance.LLExecutor | None = None
        self._xgr: Any = None  # (GrammarCompiler, 2 BatchGrammarMatchers), made on first use
        self._process_wanted = os.environ.get("CORMORANT_GRAMMAR_PROCESS",
                                              "1" if process else "0") == "1"
        self._process: GrammarProcess | None = None  # started with xgrammar's tokenizer
        self._process_tried = threading.Event()  # its start succeeded or failed
        # The grammar process's bits land in host_buffer's buffers (default: new bytes).
        self._received = (_Ring(lambda nbytes: host_buffer(max(nbytes, 1 << 16)))
                          if host_buffer is not None else None)
        self._grammars: OrderedDict[str, _Entry] = OrderedDict()  # digest -> entry
        self._masks = _Ring(lambda rows: llg_numpy.allocate_token_bitmask(max(rows, 8),
                                                                          self.vocab_size))
        self._lock = threading.Lock()  # the cache, llguidance's tokenizer, the compile slot
        self._xgr_lock = threading.Lock()  # xgrammar's tokenizer, built in the background
        # xgrammar compiles, one at a time (its threads start only when one is submitted)
        self._compile_pool = ThreadPoolExecutor(1, thread_name_prefix="xgrammar")
        self._compiling: Future | None = None
        if engine == "xgrammar":  # its tokenizer (~0.3 s) from the start, in the background,
            # so a spec's first request waits for its compile only
            self._compile_pool.submit(self._xgr_tools)

    @property
    def num_cached(self) -> int:
        return len(self._grammars)

    def ll_tokenizer(self) -> llguidance.LLTokenizer:
        with self._lock:
            if self._ll_tokenizer is None:
                tok = self.tokenizer
                self._ll_tokenizer = llguidance.hf.from_tokenizer(
                    tok.hf, n_vocab=self.vocab_size, eos_token=list(tok.eos_token_ids) or None)
            return self._ll_tokenizer

    def grammar(self, spec: StructuredOutputs) -> str:
        """The spec's grammar text, from the cache or made now (GrammarError if refused)."""
        return self._entry(spec).text

    def _entry(self, spec: StructuredOutputs) -> _Entry:
        key = spec_digest(spec)
        with self._lock:
            entry = self._grammars.get(key)
            if entry is not None:
                self._grammars.move_to_end(key)
                return entry
        text = validate(spec, self.limits)  # once per distinct spec (~1 ms)
        xgr_schema = None
        if self.json_engine == "xgrammar":
            xgr_schema = schema_text(spec.kind(), spec.json)
        entry = _Entry(text, xgr_schema, spec.disable_any_whitespace)
        with self._lock:
            self._grammars[key] = entry
            while len(self._grammars) > self.limits.cache_size:
                _, evicted = self._grammars.popitem(last=False)
                if evicted.remote_id is not None and self._process is not None:
                    self._process.drop_grammar(evicted.remote_id)
        return entry

    def new_matcher(self, spec: StructuredOutputs) -> GuidanceMatcher:
        """A matcher of its own for this sequence; the spec is validated now (GrammarError).
        A JSON schema xgrammar takes runs on xgrammar if its grammar is compiled (once per
        spec, in a background thread with the GIL released) within XGR_COMPILE_WAIT_S of its
        first request; otherwise, and if xgrammar refuses it, the spec runs on llguidance
        (for as long as it is cached), so a schema that compiles slowly (300 bounded
        strings: 6 s) holds the engine loop no longer than that. An llguidance matcher
        compiles on first use (~2 ms for a 10-field schema). Not deep copies of one
        compiled llguidance template: copies share its lexer cache, and on the H100 host
        (12 llguidance threads, b1s, 2026-12-06) that made the parallel mask fills 2-5x
        slower."""
        entry = self._entry(spec)
        compiled = self._engine_of(entry, XGR_COMPILE_WAIT_S)
        if compiled is not None:
            process = self._process
            if process is not None and process.alive:
                if entry.remote_id is None:
                    entry.remote_id = process.add_grammar(compiled.serialize_json())
                gid, stop_ids = entry.remote_id, self._stop_ids
                return GuidanceMatcher(lambda: RemoteMatcher(process, gid, stop_ids),
                                       xgrammar=True)
            import xgrammar as xgr
            return GuidanceMatcher(lambda: _Xgr(xgr.GrammarMatcher(compiled)), xgrammar=True)
        kind = spec.kind()
        return GuidanceMatcher(lambda: _Llg(self._compile(entry.text, kind)))

    def prepare(self, spec: StructuredOutputs, timeout: float | None = None) -> bool:
        """Validate the spec and wait for its xgrammar compile (if xgrammar takes it) and for
        the grammar process's start (if wanted): True when its next matchers run on xgrammar
        (tests, benchmarks' warm-up)."""
        on_xgrammar = self._engine_of(self._entry(spec), timeout) is not None
        if on_xgrammar and self._process_wanted:
            self._process_tried.wait(timeout)
        return on_xgrammar

    @property
    def process_alive(self) -> bool:
        """Whether new xgrammar matchers go to the grammar process."""
        return self._process is not None and self._process.alive

    def _engine_of(self, entry: _Entry, wait_s: float | None) -> Any:
        """The compiled xgrammar grammar the spec's matchers use, or None: llguidance. The
        spec's first matcher decides, for as long as it stays cached, so equal requests
        (a greedy one streamed and not) always get the same engine and the same tokens."""
        if entry.on_xgrammar is None:
            compiled = self._xgr_compiled(entry, wait_s)
            entry.on_xgrammar = compiled is not None
            return compiled
        return entry.compiled.result() if entry.on_xgrammar else None

    def _compile(self, text: str, kind: str) -> llguidance.LLMatcher:
        """The matcher for validated grammar text; should llguidance still refuse it with this
        tokenizer, a matcher that allows only the end (the sequence stops, logged)."""
        matcher = llguidance.LLMatcher(self.ll_tokenizer(), text, log_level=0,
                                       limits=self.limits.parser_limits())
        if matcher.is_error():
            log.error("%s constraint refused at compile (%s); the sequence ends", kind,
                      matcher.get_error()[:300])
            matcher = llguidance.LLMatcher(self.ll_tokenizer(),
                                           llguidance.LLMatcher.grammar_from_regex(""),
                                           log_level=0)
        return matcher

    def _xgr_tools(self) -> Any:
        with self._xgr_lock:
            if self._xgr is None:
                import xgrammar as xgr
                tok = self.tokenizer
                info = xgr.TokenizerInfo.from_huggingface(
                    tok.hf, vocab_size=self.vocab_size, stop_token_ids=list(tok.eos_token_ids))
                # No compiler cache of its own (unbounded by default): ours is the LRU above.
                self._xgr = (xgr.GrammarCompiler(info, max_threads=_threads(),
                                                 cache_enabled=False),
                             xgr.BatchGrammarMatcher(max_threads=1),
                             xgr.BatchGrammarMatcher(max_threads=min(4, _threads())))
                if self._process_wanted:  # beside the compiles, which need not wait for it
                    threading.Thread(target=self._start_process, args=(info,),
                                     name="grammar-process-start", daemon=True).start()
            return self._xgr

    def _start_process(self, info: Any) -> None:
        """The grammar process, or (logged) none: xgrammar then runs in this process, as it
        does for the matchers made before the process is up (~2 s: it imports xgrammar)."""
        try:
            self._process = GrammarProcess(info.serialize_json(), self.vocab_size,
                                           threads=min(4, _threads()), many_rows=XGR_MANY_ROWS)
        except (OSError, GrammarProcessError) as exc:
            log.warning("no grammar process (%s): xgrammar runs in the engine process", exc)
        finally:
            self._process_tried.set()

    def close(self) -> None:
        """Stop the grammar process, if any (it also stops when this process exits)."""
        if self._process is not None:
            self._process.close()

    def _batcher(self, rows: int) -> Any:
        """xgrammar's batched matcher for this many rows: 1 thread, or up to 4 from
        XGR_MANY_ROWS."""
        return self._xgr_tools()[1 if rows < XGR_MANY_ROWS else 2]

    def _xgr_compiled(self, entry: _Entry, wait_s: float | None) -> Any:
        """The entry's compiled xgrammar grammar, its compile started if it was not (one
        compile at a time: while another runs, the spec is left for a later request);
        None if there is none (yet)."""
        if entry.xgr_schema is None:
            return None
        with self._lock:
            if entry.compiled is None and self._compiling is None:
                entry.compiled = self._compiling = self._compile_pool.submit(
                    self._xgr_compile, entry)
            future = entry.compiled
        if future is None:
            return None
        try:
            return future.result(timeout=wait_s)
        except FutureTimeout:
            return None

    def _xgr_compile(self, entry: _Entry) -> Any:
        try:
            return self._xgr_tools()[0].compile_grammar(
                json_grammar(entry.xgr_schema, entry.compact))
        except Exception as e:  # noqa: BLE001 (any refusal: llguidance runs the spec)
            log.warning("xgrammar refused a JSON schema (%s); llguidance runs it",
                        str(e)[:200])
            return None
        finally:
            with self._lock:
                self._compiling = None

    def advance(self, matchers: list[GuidanceMatcher], tokens: list[int]
                ) -> list[tuple[bool, bool]]:
        """Each matcher takes its token: (accepted, ended) for each. xgrammar's rows in one
        batched call, which releases the GIL once rather than once a row; an xgrammar
        matcher ends when it accepts a stop token (the tokenizer's EOS ids)."""
        states = [m.state for m in matchers]
        results: list[tuple[bool, bool] | None] = [None] * len(states)
        remote = [row for row, state in enumerate(states) if isinstance(state, RemoteMatcher)]
        if remote:
            self._advance_remote([states[row] for row in remote],
                                 [tokens[row] for row in remote], remote, results)
        xg_rows = [row for row, state in enumerate(states) if isinstance(state, _Xgr)]
        if len(xg_rows) > 1:
            accepted = self._batcher(len(xg_rows)).batch_accept_token(
                [states[row].xg for row in xg_rows], [tokens[row] for row in xg_rows])
            for row, ok in zip(xg_rows, accepted):
                state = states[row]
                state.ended = state.ended or (ok and tokens[row] in self._stop_ids)
                results[row] = (ok, state.ended)
        for row, state in enumerate(states):
            if results[row] is None:
                results[row] = (state.accept(tokens[row]), state.is_terminated())
        return results  # type: ignore[return-value]

    def _advance_remote(self, states: list[RemoteMatcher], tokens: list[int],
                        rows: list[int], results: list) -> None:
        """The grammar process's matchers take their tokens, in one request."""
        try:
            accepted = states[0].process.call(accept=[s.mid for s in states], tokens=tokens)[0]
        except GrammarProcessError as exc:
            log.error("%s: its %d sequences end", exc, len(states))
            accepted = bytes(len(states))  # rejected: the engine finishes them
        for row, state, token, ok in zip(rows, states, tokens, accepted):
            state.took(token, ok == 1)
            results[row] = (ok == 1, state.ended)

    def advances_elsewhere(self, matchers: list[GuidanceMatcher]) -> bool:
        """These matchers live in the grammar process: advancing them holds no GIL here, so
        the mask worker may run the advances too."""
        return all(isinstance(m.state, RemoteMatcher) for m in matchers)

    def fill_at_once(self, matchers: list[GuidanceMatcher]) -> bool:
        """xgrammar's rows fill in one batched call (its C++ releases the GIL; a Python
        thread pool of per-row fills ran slower than one thread); llguidance's may fill in
        chunks, each on its own threads with the GIL released."""
        return all(m.xgrammar for m in matchers)

    def _allow_end(self, row: np.ndarray) -> None:
        """A row whose grammar has ended: only the end-of-sequence tokens."""
        words = row.view(np.uint32)
        words[:] = 0
        for token in self.tokenizer.eos_token_ids:
            if token < self.vocab_size:
                words[token // 32] |= np.uint32(1 << (token % 32))

    def fill_bitmasks(self, matchers: list[GuidanceMatcher]) -> memoryview:
        states = [m.state for m in matchers]  # builds what has not been built yet
        remote = [row for row, state in enumerate(states)
                  if isinstance(state, RemoteMatcher) and not state.ended]
        if len(remote) == len(states):  # the usual case: the process's bits as they came
            bits = self._fill_remote(states)
            if bits is not None:
                return memoryview(bits)
            remote = []  # it failed: every row ended
        bitmask = self._masks.take(len(states))[:len(states)]  # [R, W]; every row written
        if remote:
            bits = self._fill_remote([states[row] for row in remote])
            if bits is not None:
                bitmask[remote] = np.frombuffer(bits, dtype="<i4").reshape(len(remote), -1)
            else:
                for row in remote:
                    self._allow_end(bitmask[row])
        xg_rows = []
        for row, state in enumerate(states):
            if isinstance(state, RemoteMatcher):
                if state.ended:
                    self._allow_end(bitmask[row])
            elif isinstance(state, _Xgr):
                if state.is_terminated():  # ended, yet scheduled (async steps): the end only
                    self._allow_end(bitmask[row])
                else:
                    xg_rows.append(row)
        if xg_rows:
            self._batcher(len(xg_rows)).batch_fill_next_token_bitmask(
                [states[row].xg for row in xg_rows], bitmask, xg_rows)
            clear_spare_bits(bitmask, self.vocab_size, xg_rows)
        ll_rows = [(s.ll, row) for row, s in enumerate(states) if isinstance(s, _Llg)]
        if len(ll_rows) == 1:
            llg_numpy.fill_next_token_bitmask(ll_rows[0][0], bitmask, ll_rows[0][1])
        elif ll_rows:
            if self._executor is None:
                self._executor = llguidance.LLExecutor()
            llg_numpy.fill_next_token_bitmask_par(self._executor, ll_rows, bitmask)
        # a byte view of the array, not a copy (~5 MB at 256 rows of a 152k vocabulary)
        return memoryview(bitmask.astype("<i4", copy=False)).cast("B")

    def _fill_remote(self, states: list[RemoteMatcher]) -> bytes | memoryview | None:
        """The grammar process's bits for these matchers, or None if it failed (logged;
        their sequences then get the end only, and end)."""
        into = self._received.take if self._received is not None else None
        try:
            return states[0].process.call(fill=[s.mid for s in states], into=into)[1]
        except GrammarProcessError as exc:
            log.error("%s: its %d sequences end", exc, len(states))
            for state in states:
                state.ended = True
            return None


class _Ring:
    """MASK_BUFFERS buffers used in turn, each remade (by `make`) when a call needs a longer
    one: a fresh ~5 MB bitmask a step (256 rows of a 152k vocabulary) cost ~0.3 ms in page
    faults. What `take` hands out stays valid for MASK_BUFFERS - 1 more takes (the runner
    copies a step's bits at its next sampling, before the engine asks for another fill)."""

    def __init__(self, make: Callable[[int], Any]) -> None:
        self._make = make
        self._buffers: list[Any] = [None] * MASK_BUFFERS
        self._next = 0

    def take(self, length: int) -> Any:
        """The next buffer, at least `length` long (len: rows of an array, bytes of a view)."""
        self._next = (self._next + 1) % MASK_BUFFERS
        buffer = self._buffers[self._next]
        if buffer is None or len(buffer) < length:
            buffer = self._buffers[self._next] = self._make(length)
        return buffer


def _threads() -> int:
    """Mask threads: the cores this process may use, leaving one to the engine loop."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return max(1, min(16, cores - 1))


def bitmask_rows(bits: bytes | memoryview, num_rows: int) -> np.ndarray:
    """Bytes from fill_bitmasks back to their [rows, words] int32 array (tests, tools)."""
    return np.frombuffer(bits, dtype="<i4").reshape(num_rows, -1)
