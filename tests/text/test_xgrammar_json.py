"""text.xgrammar_json (which schemas xgrammar takes, its string fix) and the backend's JSON
fast path (xgrammar rows and llguidance rows in one fill, the fallback), on the tiny
byte-level BPE tokenizer."""
from __future__ import annotations

import json

import numpy as np
import pytest
import xgrammar as xgr

import tiny
from cormorant.sampling_params import StructuredOutputs
from cormorant.text.guidance_backend import GuidanceBackend, _Entry, _Llg, _Xgr, bitmask_rows
from cormorant.text.tokenizer import load_tokenizer
from cormorant.text.xgrammar_json import eligible, json_grammar, schema_text

BOUNDED = {"type": "object", "additionalProperties": False, "required": ["a", "n"],
           "properties": {"a": {"type": "string", "maxLength": 6},
                          "n": {"type": "integer", "minimum": 0, "maximum": 99}}}


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok")
    tiny.save_tokenizer(path)
    return load_tokenizer(str(path))


def _allowed(words: np.ndarray, vocab: int) -> set[int]:
    bits = np.unpackbits(np.ascontiguousarray(words).view(np.uint8), bitorder="little")
    return set(np.flatnonzero(bits[:vocab]).tolist())


def _control_tokens(tokenizer) -> set[int]:
    """Tokens whose text holds a raw control character (U+0000-U+001F)."""
    return {t for t in range(tokenizer.vocab_size)
            if any(ord(c) < 0x20 for c in tokenizer.decode([t]))}


def test_eligible_keeps_only_what_xgrammar_enforces():
    assert eligible(BOUNDED)
    assert eligible({"$defs": {"p": {"type": "integer"}}, "anyOf": [{"$ref": "#/$defs/p"},
                                                                    {"type": "null"}]})
    assert eligible({"type": "string", "pattern": "^[0-9]{5}$"})
    assert not eligible({"type": "object", "minProperties": 1})  # xgrammar ignores it
    assert not eligible({"type": "array", "items": {"type": "array", "uniqueItems": True}})
    assert not eligible({"type": "string", "pattern": '^a"b$'})  # a raw quote in the string
    assert not eligible({"type": "string", "pattern": "^a\\\\b$"})  # a raw backslash
    assert not eligible({"type": "string", "pattern": "^a\\sb$"})  # \s matches a newline
    for pattern in ("^.{2}$", "^[^x]+$", "^\\D$", "^\\W$"):  # these can match a surrogate
        assert not eligible({"type": "string", "pattern": pattern}), pattern
    assert eligible({"type": "string", "pattern": "^[a-z]+\\.[a-z]{2,3}$"})
    assert schema_text("json_object", None) == '{"type": "object"}'
    assert schema_text("regex", None) is None
    assert schema_text("json", '{"type": "object", "minProperties": 2}') is None


def test_bounded_strings_never_admit_raw_control_characters(tokenizer):
    """xgrammar's own grammar for a maxLength string admits raw control characters (invalid
    JSON); the rewritten one does not, and still admits ordinary characters."""
    info = xgr.TokenizerInfo.from_huggingface(tokenizer.hf, vocab_size=tokenizer.vocab_size)
    compiler = xgr.GrammarCompiler(info, cache_enabled=False)
    schema = json.dumps(BOUNDED)
    controls = _control_tokens(tokenizer)
    assert controls
    prefix = tokenizer.encode('{"a": "', add_special_tokens=False)
    allowed = {}
    for name, compiled in (("theirs", compiler.compile_json_schema(schema, any_whitespace=False)),
                           ("ours", compiler.compile_grammar(json_grammar(schema, False)))):
        matcher = xgr.GrammarMatcher(compiled)
        assert all(matcher.accept_token(t) for t in prefix)
        mask = xgr.allocate_token_bitmask(1, tokenizer.vocab_size).numpy()
        matcher.fill_next_token_bitmask(mask, 0)
        allowed[name] = _allowed(mask[0], tokenizer.vocab_size)
    assert allowed["theirs"] & controls  # the defect this module works around
    assert not allowed["ours"] & controls
    assert {tokenizer.encode(c, add_special_tokens=False)[0] for c in "az9 "} <= allowed["ours"]


def test_one_fill_serves_xgrammar_and_llguidance_rows(tokenizer):
    """A step mixing both engines fills each row as that row alone would be filled."""
    backend = GuidanceBackend(tokenizer)
    specs = [StructuredOutputs(json=json.dumps(BOUNDED)), StructuredOutputs(regex="ab+c"),
             StructuredOutputs(json_object=True), StructuredOutputs(choice=["fox", "dog"])]
    assert [backend.prepare(spec, timeout=60) for spec in specs] == [True, False, True, False]
    matchers = [backend.new_matcher(spec) for spec in specs]
    rows = bitmask_rows(backend.fill_bitmasks(matchers), len(matchers))
    assert [type(m.state) for m in matchers] == [_Xgr, _Llg, _Xgr, _Llg]
    for matcher, row in zip(matchers, rows):
        alone = bitmask_rows(backend.fill_bitmasks([matcher]), 1)[0]
        assert np.array_equal(row, alone)
        assert _allowed(row, backend.vocab_size)


def test_json_on_xgrammar_ends_with_the_stop_token(tokenizer):
    backend = GuidanceBackend(tokenizer)
    assert backend.prepare(StructuredOutputs(json=json.dumps(BOUNDED)), timeout=60)
    matcher = backend.new_matcher(StructuredOutputs(json=json.dumps(BOUNDED)))
    assert matcher.xgrammar
    for token in tokenizer.encode('{"a": "xy", "n": 7}', add_special_tokens=False):
        assert matcher.accept(token)
    eos = set(tokenizer.eos_token_ids)
    assert not matcher.is_terminated
    assert _allowed(bitmask_rows(backend.fill_bitmasks([matcher]), 1)[0],
                    backend.vocab_size) == eos
    assert matcher.accept(min(eos)) and matcher.is_terminated
    # Scheduled once more after its end (async steps): the end only, no error.
    assert _allowed(bitmask_rows(backend.fill_bitmasks([matcher]), 1)[0],
                    backend.vocab_size) == eos
    matcher.rollback(2)
    assert not matcher.is_terminated


def test_batched_advance_matches_one_matcher_at_a_time(tokenizer):
    """backend.advance takes xgrammar's rows in one batched call and keeps their end itself
    (no per-row call into xgrammar); its (accepted, ended) pairs and the masks after it are
    those of feeding each matcher alone, across a JSON object's end, a rejected token, and
    rows on llguidance."""
    backend = GuidanceBackend(tokenizer)
    specs = [StructuredOutputs(json=json.dumps(BOUNDED))] * 3 + [
        StructuredOutputs(json_object=True), StructuredOutputs(regex="ab+c")]
    for spec in specs:
        backend.prepare(spec, timeout=60)
    eos = min(tokenizer.eos_token_ids)
    texts = ['{"a": "xy", "n": 7}', '{"a": "q", "n": 12}', '{"a": "', '{"k": 1}', "abbc"]
    streams = [tokenizer.encode(text, add_special_tokens=False) + [eos] for text in texts]
    streams[2].append(tokenizer.encode("z", add_special_tokens=False)[0])  # EOS in a string
    batched = [backend.new_matcher(spec) for spec in specs]
    alone = [backend.new_matcher(spec) for spec in specs]
    assert [m.xgrammar for m in batched] == [True, True, True, True, False]
    seen = set()
    for step in range(max(len(tokens) for tokens in streams)):
        live = [i for i, tokens in enumerate(streams) if step < len(tokens)]
        tokens = [streams[i][step] for i in live]
        results = backend.advance([batched[i] for i in live], tokens)
        expected = [(alone[i].accept(t), alone[i].is_terminated) for i, t in zip(live, tokens)]
        assert results == expected, step
        seen.update(results)
        assert [batched[i].state.xg.is_terminated() for i in live if batched[i].xgrammar] == [
            batched[i].is_terminated for i in live if batched[i].xgrammar]
        both = bitmask_rows(backend.fill_bitmasks([batched[i] for i in live]), len(live))
        one = bitmask_rows(backend.fill_bitmasks([alone[i] for i in live]), len(live))
        assert np.array_equal(both, one)
    assert [m.is_terminated for m in batched] == [True, True, False, True, True]
    assert seen == {(True, False), (True, True), (False, False)}  # went on, ended, rejected


def test_what_xgrammar_refuses_or_does_not_enforce_runs_on_llguidance(tokenizer):
    backend = GuidanceBackend(tokenizer)
    unenforced = backend.new_matcher(StructuredOutputs(json=json.dumps(
        {"type": "object", "minProperties": 1})))
    backend.fill_bitmasks([unenforced])
    assert isinstance(unenforced.state, _Llg)
    refused = _Entry("unused", '{"$ref": "#/$defs/missing"}', False)
    assert backend._xgr_compiled(refused, None) is None  # refused at compile (logged)
    assert refused.compiled is not None and refused.compiled.result() is None
    only_llg = GuidanceBackend(tokenizer, json_engine="llguidance")
    matcher = only_llg.new_matcher(StructuredOutputs(json=json.dumps(BOUNDED)))
    only_llg.fill_bitmasks([matcher])
    assert isinstance(matcher.state, _Llg)
    with pytest.raises(ValueError):
        GuidanceBackend(tokenizer, json_engine="outlines")


def test_no_row_allows_ids_past_the_vocabulary(tokenizer):
    """The bitmask's last word has spare bits (400 ids in 13 words): none may be set."""
    backend = GuidanceBackend(tokenizer)
    assert backend.vocab_size % 32
    assert backend.prepare(StructuredOutputs(json_object=True), timeout=60)
    matchers = [backend.new_matcher(StructuredOutputs(json_object=True)),
                backend.new_matcher(StructuredOutputs(regex="[a-z]+"))]
    for token in tokenizer.encode('{"ab', add_special_tokens=False):
        assert matchers[0].accept(token)
    rows = bitmask_rows(backend.fill_bitmasks(matchers), 2)
    for row in rows:
        bits = np.unpackbits(np.ascontiguousarray(row).view(np.uint8), bitorder="little")
        assert bits[:backend.vocab_size].any() and not bits[backend.vocab_size:].any()


def test_a_slow_compile_never_holds_the_engine(tokenizer, monkeypatch):
    """A spec's first request waits for its xgrammar compile only XGR_COMPILE_WAIT_S (a
    schema of 300 bounded strings compiles in ~6 s on a 49k vocabulary): a spec not
    compiled by then runs on llguidance, and stays there, so that equal requests always get
    the same tokens."""
    from cormorant.text import guidance_backend

    monkeypatch.setattr(guidance_backend, "XGR_COMPILE_WAIT_S", 0.0)
    backend = GuidanceBackend(tokenizer)
    spec = StructuredOutputs(json=json.dumps(BOUNDED))
    first = backend.new_matcher(spec)  # the compile started; not waited for
    assert not first.xgrammar and not backend.fill_at_once([first])
    backend._entry(spec).compiled.result(timeout=60)  # compiled now, but too late
    later = backend.new_matcher(spec)
    assert not later.xgrammar and not backend.prepare(spec, timeout=60)
    other = StructuredOutputs(json=json.dumps(BOUNDED), disable_any_whitespace=True)
    assert backend.prepare(other, timeout=60)  # waited for: on xgrammar
    assert backend.new_matcher(other).xgrammar
    rows = bitmask_rows(backend.fill_bitmasks([first, backend.new_matcher(other)]), 2)
    assert np.array_equal(rows[0], rows[1])  # both engines, the same first tokens


def _byte_token(tokenizer, byte: int) -> int:
    """The tiny byte-level BPE tokenizer's token of one raw byte (GPT-2's byte alphabet)."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    char = chr(byte) if byte in printable else chr(256 + sorted(
        set(range(256)) - set(printable)).index(byte))
    return tokenizer.hf.get_vocab()[char]


@pytest.mark.parametrize("schema", [{"type": "string", "maxLength": 3}, {"type": "string"}])
def test_strings_never_take_the_bytes_of_a_surrogate(tokenizer, schema):
    """ED A0 80 is U+D800 in UTF-8's pattern, which UTF-8 forbids: xgrammar's own classes
    take it (a property-test example decoded to three replacement characters and broke
    maxLength 3), the rewritten ones refuse it; a real two-byte character still passes."""
    info = xgr.TokenizerInfo.from_huggingface(tokenizer.hf, vocab_size=tokenizer.vocab_size)
    compiler = xgr.GrammarCompiler(info, cache_enabled=False)
    text = json.dumps(schema)
    quote = _byte_token(tokenizer, ord('"'))

    def takes(compiled, data: bytes) -> bool:
        matcher = xgr.GrammarMatcher(compiled)
        assert matcher.accept_token(quote)
        return all(matcher.accept_token(_byte_token(tokenizer, b)) for b in data)

    theirs = compiler.compile_json_schema(text, any_whitespace=False)
    ours = compiler.compile_grammar(json_grammar(text, False))
    assert takes(theirs, b"\xed\xa0\x80")  # the defect worked around
    assert not takes(ours, b"\xed\xa0\x80")
    assert takes(ours, "é".encode())
