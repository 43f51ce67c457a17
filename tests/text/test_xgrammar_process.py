"""text.xgrammar_process: xgrammar's matchers in a grammar process give the same masks and
accepts as in-process matchers, over random walks of a JSON schema on the tiny byte-level BPE
tokenizer; rollback and single accepts; a dead process ends its sequences and the next
matchers run in-process; a bad request fails alone."""
from __future__ import annotations

import json
import random

import jsonschema
import numpy as np
import pytest

import tiny
from cormorant.sampling_params import StructuredOutputs
from cormorant.text.guidance_backend import GuidanceBackend, _Xgr, bitmask_rows
from cormorant.text.tokenizer import load_tokenizer
from cormorant.text.xgrammar_process import GrammarProcessError, RemoteMatcher

SCHEMA = {"type": "object", "additionalProperties": False, "required": ["a", "n", "t"],
          "properties": {"a": {"type": "string", "maxLength": 5},
                         "n": {"type": "integer", "minimum": 0, "maximum": 999},
                         "t": {"type": "array", "items": {"type": "boolean"},
                               "maxItems": 3}}}
SPEC = StructuredOutputs(json=json.dumps(SCHEMA))
ROWS = 6


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok")
    tiny.save_tokenizer(path)
    return load_tokenizer(str(path))


@pytest.fixture()
def backends(tokenizer):
    local = GuidanceBackend(tokenizer, json_engine="xgrammar")
    remote = GuidanceBackend(tokenizer, json_engine="xgrammar", process=True)
    assert local.prepare(SPEC, 60) and remote.prepare(SPEC, 60)
    assert remote.process_alive and not local.process_alive
    yield local, remote
    remote.close()


def _allowed(words: np.ndarray, vocab: int) -> list[int]:
    bits = np.unpackbits(np.ascontiguousarray(words).view(np.uint8), bitorder="little")
    return np.flatnonzero(bits[:vocab]).tolist()


def test_remote_matchers_give_the_same_masks_and_accepts(backends):
    local, remote = backends
    ours = [local.new_matcher(SPEC) for _ in range(ROWS)]
    theirs = [remote.new_matcher(SPEC) for _ in range(ROWS)]
    assert all(isinstance(m.state, RemoteMatcher) for m in theirs)
    assert all(isinstance(m.state, _Xgr) for m in ours)
    rng = random.Random(7)
    written: list[list[int]] = [[] for _ in range(ROWS)]
    eos = set(local.tokenizer.eos_token_ids)
    for step in range(200):
        live = [row for row in range(ROWS) if not ours[row].is_terminated]
        if not live:
            break
        expected = bitmask_rows(local.fill_bitmasks([ours[r] for r in live]), len(live))
        got = bitmask_rows(remote.fill_bitmasks([theirs[r] for r in live]), len(live))
        np.testing.assert_array_equal(got, expected, err_msg=f"step {step}")
        tokens = [rng.choice(_allowed(expected[i], local.vocab_size)) for i in range(len(live))]
        assert (remote.advance([theirs[r] for r in live], tokens)
                == local.advance([ours[r] for r in live], tokens))
        for row, token in zip(live, tokens):
            if token not in eos:
                written[row].append(token)
    assert all(m.is_terminated for m in theirs), "every walk reached the stop token"
    for tokens in written:  # every walk wrote a document the schema accepts
        jsonschema.validate(json.loads(local.tokenizer.decode(tokens)), SCHEMA)


def test_rollback_and_single_accepts(backends, tokenizer):
    local, remote = backends
    ours, theirs = local.new_matcher(SPEC), remote.new_matcher(SPEC)
    prefix = tokenizer.encode('{"a": "x')
    for token in prefix:
        assert ours.accept(token) and theirs.accept(token)
    taken = 0
    for token in range(0, tokenizer.vocab_size, 7):  # accepted or rejected alike
        accepted = theirs.accept(token)
        assert accepted == ours.accept(token)
        if accepted:  # back to the prefix
            taken += 1
            ours.rollback(1)
            theirs.rollback(1)
    assert 0 < taken < len(range(0, tokenizer.vocab_size, 7))
    ours.rollback(2)
    theirs.rollback(2)
    np.testing.assert_array_equal(bitmask_rows(remote.fill_bitmasks([theirs]), 1),
                                  bitmask_rows(local.fill_bitmasks([ours]), 1))


def test_a_dead_process_ends_its_sequences_and_later_ones_run_here(backends, tokenizer):
    _, remote = backends
    matchers = [remote.new_matcher(SPEC) for _ in range(3)]
    remote.fill_bitmasks(matchers)  # made in the process
    remote._process.process.kill()
    remote._process.process.wait()
    token = tokenizer.encode("{")[0]
    assert remote.advance(matchers, [token] * 3) == [(False, False)] * 3  # rejected: ends
    end_only = bitmask_rows(remote.fill_bitmasks(matchers), 3)
    for row in end_only:  # the end-of-sequence tokens only
        assert set(_allowed(row, remote.vocab_size)) == set(tokenizer.eos_token_ids)
    assert not remote.process_alive
    later = remote.new_matcher(SPEC)
    assert isinstance(later.state, _Xgr) and later.accept(token)


def test_a_bad_request_fails_alone(backends):
    _, remote = backends
    process = remote._process
    with pytest.raises(GrammarProcessError, match="KeyError"):
        process.call(accept=[10**9], tokens=[1])  # no such matcher
    matcher = remote.new_matcher(SPEC)
    assert bitmask_rows(remote.fill_bitmasks([matcher]), 1).any()  # still serving


def test_bits_land_in_the_given_buffers(tokenizer, backends):
    """host_buffer: the process's bits are read straight into the caller's buffers (pinned
    memory on a GPU), reused in turn, and equal the in-process bits."""
    local, _ = backends
    made = []

    def host_buffer(nbytes: int) -> np.ndarray:
        made.append(np.empty(nbytes, dtype=np.uint8))
        return made[-1]

    remote = GuidanceBackend(tokenizer, json_engine="xgrammar", process=True,
                             host_buffer=host_buffer)
    try:
        assert remote.prepare(SPEC, 60) and remote.process_alive
        ours = [local.new_matcher(SPEC) for _ in range(3)]
        theirs = [remote.new_matcher(SPEC) for _ in range(3)]
        for token in tokenizer.encode('{"a": "xy'):
            expected = bitmask_rows(local.fill_bitmasks(ours), 3)
            bits = remote.fill_bitmasks(theirs)
            assert any(np.shares_memory(np.frombuffer(bits, np.uint8), b) for b in made)
            np.testing.assert_array_equal(bitmask_rows(bits, 3), expected)
            assert remote.advance(theirs, [token] * 3) == local.advance(ours, [token] * 3)
        assert len(made) == 3  # one a turn of the ring, then reused
    finally:
        remote.close()
