"""The grammar backend of one model: llguidance matchers bound to its tokenizer.

Implements engine.structured's GrammarBackend. The llguidance tokenizer (about half a second
for a 49k vocabulary) is built on the first constrained request, not at start-up. Each
distinct spec's grammar text is made and validated once and kept in a bounded LRU cache keyed
by the spec's digest (text.grammar.spec_digest); each sequence compiles its own matcher from
it, on first use. Masks of a step
are filled together by one LLExecutor (threads inside llguidance, the GIL released) into
one [rows, ceil(vocab / 32)] int32 array, returned as bytes for the ScheduledBatch.

Imports llguidance, numpy and text.* only; never torch or engine code.
"""
from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from typing import Callable

import llguidance
import llguidance.hf
import llguidance.numpy as llg_numpy
import numpy as np

from cormorant.sampling_params import StructuredOutputs
from cormorant.text.grammar import GrammarLimits, spec_digest, validate
from cormorant.text.tokenizer import Tokenizer

log = logging.getLogger(__name__)


class GuidanceMatcher:
    """One sequence's grammar state (engine.structured.GrammarMatcher), compiled on first use
    (`ll`): the first mask fill, in the engine's mask worker while a forward runs, rather
    than when the request is added (a burst of 256 requests would hold the engine loop for
    256 compiles of ~2 ms before its first step)."""

    def __init__(self, build: Callable[[], llguidance.LLMatcher]) -> None:
        self._build: Callable[[], llguidance.LLMatcher] | None = build
        self._ll: llguidance.LLMatcher | None = None

    @property
    def ll(self) -> llguidance.LLMatcher:
        if self._ll is None:
            assert self._build is not None
            self._ll, self._build = self._build(), None
        return self._ll

    def accept(self, token_id: int) -> bool:
        return self.ll.consume_token(token_id)

    def rollback(self, num_tokens: int) -> None:
        self.ll.rollback(num_tokens)

    @property
    def is_terminated(self) -> bool:
        return self.ll.is_stopped()


class GuidanceBackend:
    """llguidance for one tokenizer: grammar cache, matchers, batched masks."""

    def __init__(self, tokenizer: Tokenizer, limits: GrammarLimits = GrammarLimits()) -> None:
        self.tokenizer = tokenizer
        self.limits = limits
        self.vocab_size = tokenizer.vocab_size
        self._ll_tokenizer: llguidance.LLTokenizer | None = None
        self._executor: llguidance.LLExecutor | None = None
        self._grammars: OrderedDict[str, str] = OrderedDict()  # digest -> grammar text
        self._lock = threading.Lock()

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
        key = spec_digest(spec)
        with self._lock:
            text = self._grammars.get(key)
            if text is not None:
                self._grammars.move_to_end(key)
                return text
        text = validate(spec, self.limits)  # once per distinct spec (~1 ms)
        with self._lock:
            self._grammars[key] = text
            while len(self._grammars) > self.limits.cache_size:
                self._grammars.popitem(last=False)
        return text

    def new_matcher(self, spec: StructuredOutputs) -> GuidanceMatcher:
        """A matcher of its own for this sequence, compiled on first use (~2 ms for a 10-field
        schema); the grammar text, validated once per distinct spec, is checked now
        (GrammarError). Not deep copies of one compiled template: copies share its lexer
        cache, and on the H100 host (12 llguidance threads, b1s, 2026-12-06) that made the
        parallel mask fills 2-5x slower."""
        text = self.grammar(spec)
        return GuidanceMatcher(lambda: self._compile(text, spec.kind()))

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

    def fill_bitmasks(self, matchers: list[GuidanceMatcher]) -> bytes:
        bitmask = llg_numpy.allocate_token_bitmask(len(matchers), self.vocab_size)  # [R, W]
        if len(matchers) == 1:
            llg_numpy.fill_next_token_bitmask(matchers[0].ll, bitmask, 0)
        else:
            if self._executor is None:
                self._executor = llguidance.LLExecutor()
            llg_numpy.fill_next_token_bitmask_par(
                self._executor, [(m.ll, row) for row, m in enumerate(matchers)], bitmask)
        return bitmask.astype("<i4", copy=False).tobytes()


def bitmask_rows(bits: bytes, num_rows: int) -> np.ndarray:
    """Bytes from fill_bitmasks back to their [rows, words] int32 array (tests, tools)."""
    return np.frombuffer(bits, dtype="<i4").reshape(num_rows, -1)
