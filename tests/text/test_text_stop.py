"""StopStringMatcher: stop strings across delta boundaries, hold-back and flush."""
from __future__ import annotations

import random

import pytest

from cormorant.text.stop import StopStringMatcher


def run(stops, deltas, include=False):
    """Feed deltas until a stop; return (emitted text, stop, per-feed emitted texts)."""
    matcher = StopStringMatcher(stops, include_stop_str_in_output=include)
    emitted = []
    for delta in deltas:
        result = matcher.feed(delta)
        emitted.append(result.text)
        if result.stopped:
            return "".join(emitted), result.stop, emitted
    emitted.append(matcher.flush())
    return "".join(emitted), None, emitted


def reference(stops, text, include=False):
    """The first stop to complete in `text` (earliest end, then earliest start)."""
    hits = [(text.find(s) + len(s), text.find(s), s) for s in stops if s and s in text]
    if not hits:
        return text, None
    _, start, stop = min(hits, key=lambda h: h[:2])
    return text[:start + len(stop)] if include else text[:start], stop


def test_stop_spanning_three_deltas_is_cut_exactly():
    text, stop, emitted = run(["<|end|>"], ["Hello wor", "ld<|e", "nd", "|> trailing"])
    assert (text, stop) == ("Hello world", "<|end|>")
    # Nothing of the stop string was ever shown: "<|e" and "nd" were held back.
    assert emitted == ["Hello wor", "ld", "", ""]


def test_include_stop_str_in_output():
    text, stop, _ = run(["STOP"], ["abc ST", "OP def"], include=True)
    assert (text, stop) == ("abc STOP", "STOP")


def test_text_after_stop_in_same_delta_is_dropped():
    assert run(["\n\n"], ["line one\n\nline two"])[:2] == ("line one", "\n\n")


def test_earliest_of_several_stops_wins():
    # "world" is earlier in the list, "lo" completes first in the text.
    assert run(["world", "lo"], ["hel", "lo world"])[:2] == ("hel", "lo")
    assert run(["xyz", "b", "a"], ["cab"])[:2] == ("c", "a")


def test_overlapping_stops_resolved_independently_of_chunking():
    # "bc" completes (at index 3) before "abcd" (index 4), whatever the delta boundaries.
    for deltas in (["abcd"], list("abcd"), ["ab", "cd"], ["a", "bcd"]):
        assert run(["abcd", "bc"], deltas)[:2] == ("a", "bc")
    # Same end: the one that starts earlier (longer) wins.
    assert run(["bc", "abc"], ["xab", "c"])[:2] == ("x", "abc")


def test_partial_match_that_never_completes_is_flushed_at_finish():
    text, stop, emitted = run(["STOP"], ["go ST", "O"])
    assert stop is None and text == "go STO"
    assert emitted == ["go ", "", "STO"]  # held while it could still become STOP


def test_partial_match_broken_later_is_released():
    text, stop, emitted = run(["</s>"], ["a </", "b> c"])
    assert stop is None and emitted == ["a ", "</b> c", ""]


def test_hold_back_is_minimal():
    matcher = StopStringMatcher(["abcdef"])
    assert matcher.feed("xxab").text == "xx"
    assert matcher.held_text == "ab"
    # "zz" cannot start a stop, so nothing is held.
    assert matcher.feed("zz").text == "abzz" and matcher.held_text == ""


def test_repeated_prefix_characters():
    assert run(["aab"], ["a", "a", "a", "b", "c"])[:2] == ("a", "aab")


def test_no_stops_passes_text_through():
    matcher = StopStringMatcher([])
    assert matcher.feed("anything").text == "anything" and matcher.flush() == ""
    assert StopStringMatcher(["", ""]).feed("x").text == "x"  # empty stops are ignored


def test_done_after_match():
    matcher = StopStringMatcher(["."])
    assert matcher.feed("a. b").stop == "."
    assert matcher.stopped
    assert matcher.feed("more").text == "" and matcher.flush() == ""


def test_unicode_stop_strings():
    assert run(["🦜🦜"], ["parrots 🦜", "🦜 more"])[:2] == ("parrots ", "🦜🦜")
    assert run(["中文"], ["说中", "文吧"], include=True)[:2] == ("说中文", "中文")


@pytest.mark.parametrize("seed", range(5))
def test_random_streams_match_whole_text_reference(seed):
    rng = random.Random(seed)
    alphabet = "ab c"
    for _ in range(300):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 30)))
        stops = ["".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 5)))
                 for _ in range(rng.randrange(1, 4))]
        include = rng.random() < 0.5
        num_cuts = min(max(len(text) - 1, 0), rng.randrange(0, 6))
        cuts = sorted(rng.sample(range(1, len(text)), k=num_cuts))
        deltas = [text[i:j] for i, j in zip([0, *cuts], [*cuts, len(text)])]
        got = run(stops, deltas, include)[:2]
        assert got == reference(stops, text, include), (stops, deltas)
