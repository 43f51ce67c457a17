"""The grammar backend of one model: llguidance matchers bound to its tokenizer.

Implements engine.structured's GrammarBackend. The llguidance tokenizer (about half a second
for a 49k vocabulary) is built on the first constrained request, not at start-up. Each
distinct spec is compiled once into a template matcher, kept in a bounded LRU cache keyed by
the spec's digest (text.grammar.spec_digest); each sequence gets a deep copy of it. Masks of a step
are filled together by one LLExecutor (threads inside llguidance, the GIL released) into
one [rows, ceil(vocab / 32)] int32 array, returned as bytes for the ScheduledBatch.

Imports llguidance, numpy and text.* only; never torch or engine code.
"""
from __future__ import annotations

import threading
from collections import OrderedDict

import llguidance
import llguidance.hf
import llguidance.numpy as llg_numpy
import numpy as np

from cormorant.sampling_params import StructuredOutputs
from cormorant.text.grammar import GrammarError, GrammarLimits, grammar_for, spec_digest
from cormorant.text.tokenizer import Tokenizer


class GuidanceMatcher:
    """One sequence's grammar state (engine.structured.GrammarMatcher)."""

    def __init__(self, matcher: llguidance.LLMatcher) -> None:
        self.ll = matcher

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
        self._templates: OrderedDict[str, llguidance.LLMatcher] = OrderedDict()  # by digest
        self._lock = threading.Lock()

    @property
    def num_cached(self) -> int:
        return len(self._templates)

    def ll_tokenizer(self) -> llguidance.LLTokenizer:
        with self._lock:
            if self._ll_tokenizer is None:
                tok = self.tokenizer
                self._ll_tokenizer = llguidance.hf.from_tokenizer(
                    tok.hf, n_vocab=self.vocab_size, eos_token=list(tok.eos_token_ids) or None)
            return self._ll_tokenizer

    def _template(self, spec: StructuredOutputs) -> llguidance.LLMatcher:
        """The spec's compiled matcher, never advanced: from the cache or compiled now
        (GrammarError if refused or invalid)."""
        key = spec_digest(spec)
        with self._lock:
            template = self._templates.get(key)
            if template is not None:
                self._templates.move_to_end(key)
                return template
        template = llguidance.LLMatcher(self.ll_tokenizer(), grammar_for(spec, self.limits),
                                        log_level=0, limits=self.limits.parser_limits())
        if template.is_error():
            raise GrammarError("grammar", f"invalid {spec.kind()} constraint: "
                               f"{template.get_error()[:300]}")
        with self._lock:
            self._templates[key] = template
            while len(self._templates) > self.limits.cache_size:
                self._templates.popitem(last=False)
        return template

    def new_matcher(self, spec: StructuredOutputs) -> GuidanceMatcher:
        """A fresh matcher: a copy of the compiled template (compiling a grammar costs
        milliseconds, a copy microseconds: a batch of 256 requests under one schema compiles
        it once)."""
        template = self._template(spec)
        with self._lock:
            return GuidanceMatcher(template.deep_copy())

    def accept_all(self, matchers: list[GuidanceMatcher], token_ids: list[int]) -> list[bool]:
        """Each matcher consumes its token; more than one row: in parallel (LLExecutor)."""
        if len(matchers) == 1:
            return [matchers[0].accept(token_ids[0])]
        return llg_numpy.consume_token_par(
            self._parallel(), [(m.ll, t) for m, t in zip(matchers, token_ids)])

    def _parallel(self) -> llguidance.LLExecutor:
        if self._executor is None:
            self._executor = llguidance.LLExecutor()
        return self._executor

    def fill_bitmasks(self, matchers: list[GuidanceMatcher]) -> bytes:
        bitmask = llg_numpy.allocate_token_bitmask(len(matchers), self.vocab_size)  # [R, W]
        if len(matchers) == 1:
            llg_numpy.fill_next_token_bitmask(matchers[0].ll, bitmask, 0)
        else:
            llg_numpy.fill_next_token_bitmask_par(
                self._parallel(), [(m.ll, row) for row, m in enumerate(matchers)], bitmask)
        return bitmask.astype("<i4", copy=False).tobytes()


def bitmask_rows(bits: bytes, num_rows: int) -> np.ndarray:
    """Bytes from fill_bitmasks back to their [rows, words] int32 array (tests, tools)."""
    return np.frombuffer(bits, dtype="<i4").reshape(num_rows, -1)
