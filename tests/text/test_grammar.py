"""text.grammar (bounds, conversion, validation) and text.guidance_backend (the compile
cache, matchers and packed bitmasks) on the tiny byte-level BPE tokenizer."""
from __future__ import annotations

import json

import pytest

import tiny
from cormorant.sampling_params import StructuredOutputs
from cormorant.text.grammar import GrammarError, GrammarLimits, spec_digest, validate
from cormorant.text.guidance_backend import (GuidanceBackend, GuidanceMatcher, _Llg,
                                             bitmask_rows)
from cormorant.text.tokenizer import load_tokenizer


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok")
    tiny.save_tokenizer(path)
    return load_tokenizer(str(path))


def _allowed(backend: GuidanceBackend, matcher) -> set[int]:
    words = bitmask_rows(backend.fill_bitmasks([matcher]), 1)[0]
    return {t for t in range(backend.vocab_size) if (int(words[t // 32]) >> (t % 32)) & 1}


def test_mask_allows_exactly_the_grammars_next_tokens(tokenizer):
    backend = GuidanceBackend(tokenizer)
    matcher = backend.new_matcher(StructuredOutputs(choice=["fox", "dog"]))
    allowed = _allowed(backend, matcher)
    texts = {tokenizer.decode([t]) for t in allowed}
    assert texts and all("fox".startswith(t) or "dog".startswith(t) for t in texts), texts
    for token in tokenizer.encode("dog", add_special_tokens=False):
        assert not matcher.is_terminated
        assert matcher.accept(token)
    assert matcher.is_terminated
    matcher.rollback(1)  # beam-style undo: one token back, the grammar is open again
    assert not matcher.is_terminated


def test_matchers_compile_on_first_use_and_bad_specs_fail_when_added(tokenizer):
    """new_matcher checks the grammar (validated once per spec) but compiles nothing: the
    first mask compiles it. A grammar llguidance refuses at compile despite that ends the
    sequence (only the end allowed) instead of failing the step."""
    backend = GuidanceBackend(tokenizer)
    matcher = backend.new_matcher(StructuredOutputs(choice=["fox", "dog"]))
    assert matcher._state is None
    assert _allowed(backend, matcher) and matcher._state is not None
    with pytest.raises(GrammarError):
        backend.new_matcher(StructuredOutputs(grammar="start: foo\nfoo: bar"))
    ends = backend._compile("start: foo\nfoo: bar", "grammar")  # as if validation missed it
    eos = set(tokenizer.eos_token_ids)
    assert eos and _allowed(backend, GuidanceMatcher(lambda: _Llg(ends))) == eos


def test_compile_cache_is_bounded_and_keyed_by_digest(tokenizer):
    backend = GuidanceBackend(tokenizer, GrammarLimits(cache_size=2))
    specs = [StructuredOutputs(regex=f"a{{{i}}}") for i in range(1, 4)]
    for spec in specs:
        backend.new_matcher(spec)
    assert backend.num_cached == 2
    assert spec_digest(specs[0]) == spec_digest(StructuredOutputs(regex="a{1}"))
    assert spec_digest(specs[0]) != spec_digest(specs[1])


def test_depth_scan_ignores_brackets_inside_strings():
    limits = GrammarLimits(max_schema_depth=3)
    schema = {"type": "string", "pattern": "^[\\[{]{2}[a]$", "description": "{[{[{["}
    validate(StructuredOutputs(json=json.dumps(schema)), limits)
    with pytest.raises(GrammarError) as info:
        validate(StructuredOutputs(json='{"items": {"items": {"items": {}}}}'), limits)
    assert info.value.limit == "max_schema_depth"


def test_schema_may_be_a_dict_offline():
    grammar = validate(StructuredOutputs(json={"type": "integer"}))
    assert "json_schema" in grammar
