"""Tool-call parsers on controlled outputs: each family's format, malformed output (which stays
content), streaming equal to the whole-text parse at every split, and linear time."""
from __future__ import annotations

import json
import random
import time

import pytest

from cormorant.text.tool_parsers import (ArgsDelta, CallHeader, HermesParser,
                                         Llama3JsonParser, MistralParser, NamedParser,
                                         RequiredParser, StreamingToolParser, ToolCall)

WEATHER = ToolCall("get_weather", '{"city": "Paris"}')
TIME = ToolCall("get_time", '{"tz": "CET", "precise": true}')

CASES = [  # (parser, output text, content, calls)
    (HermesParser, '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n'
     '</tool_call>', None, [WEATHER]),
    (HermesParser, 'Let me check.\n<tool_call>{"name": "get_weather", "arguments": '
     '{"city": "Paris"}}</tool_call>\n<tool_call>{"name": "get_time", "arguments": '
     '"{\\"tz\\": \\"CET\\", \\"precise\\": true}"}</tool_call>', "Let me check.",
     [WEATHER, TIME]),
    # SmolLM2's training format: a list of calls in one block; EOS before the closing tag.
    (HermesParser, '<tool_call>[{"name": "get_weather", "arguments": {"city": "Paris"}}, '
     '{"name": "get_time", "arguments": {"tz": "CET", "precise": true}}]', None,
     [WEATHER, TIME]),
    (HermesParser, "No tools needed: 4.", "No tools needed: 4.", []),
    (HermesParser, '<tool_call>[]</tool_call>', '<tool_call>[]</tool_call>', []),
    (HermesParser, '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}'
     '</tool_call><tool_call>{broken}</tool_call>', '<tool_call>{broken}</tool_call>',
     [WEATHER]),
    (Llama3JsonParser, '{"name": "get_weather", "parameters": {"city": "Paris"}}', None,
     [WEATHER]),
    (Llama3JsonParser, '<|python_tag|>{"name": "get_weather", "parameters": {"city": '
     '"Paris"}}; {"name": "get_time", "parameters": {"tz": "CET", "precise": true}}', None,
     [WEATHER, TIME]),
    (Llama3JsonParser, '{"name": "get_weather"} and then some text',
     '{"name": "get_weather"} and then some text', []),
    (Llama3JsonParser, '{"answer": 42}', '{"answer": 42}', []),
    (Llama3JsonParser, 'Paris is sunny.', 'Paris is sunny.', []),
    (MistralParser, ' [{"name": "get_weather", "arguments": {"city": "Paris"}}, {"name": '
     '"get_time", "arguments": {"tz": "CET", "precise": true}}]', None, [WEATHER, TIME]),
    (MistralParser, '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris"}}]',
     None, [WEATHER]),
    (MistralParser, '[1, 2, 3] are numbers', '[1, 2, 3] are numbers', []),
    (MistralParser, ' [{"name": "get_weather", "arguments": [1]}]',
     ' [{"name": "get_weather", "arguments": [1]}]', []),
]


@pytest.mark.parametrize("cls,text,content,calls", CASES)
def test_parse(cls, text, content, calls):
    parsed = cls().parse(text)
    assert parsed.calls == calls
    assert parsed.content == content


# A block that breaks after its call's name: whole, it stays content; streamed, the call had
# begun (its name and first argument pieces went out) and stays a call.
BROKEN = '<tool_call>{"name": "get_weather", "arguments": {"city": </tool_call>'


def _stream(cls, text: str, step: int) -> list:
    stream = StreamingToolParser(cls())
    pieces = []
    for i in range(0, len(text), step):
        pieces += stream.feed(text[i:i + step])
    return pieces + stream.finish()


def _calls(pieces: list) -> list[ToolCall]:
    """Streamed pieces -> whole calls: a CallHeader's ArgsDelta pieces joined."""
    calls: list[list] = []
    for p in pieces:
        if isinstance(p, (ToolCall, CallHeader)):
            calls.append([p.name, p.arguments if isinstance(p, ToolCall) else ""])
        elif isinstance(p, ArgsDelta):
            calls[-1][1] += p.text
    return [ToolCall(name, args) for name, args in calls]


def test_broken_block_after_the_name():
    assert HermesParser().parse(BROKEN).content == BROKEN
    for step in (1, 3, len(BROKEN)):
        assert _calls(_stream(HermesParser, BROKEN, step)) == \
            [ToolCall("get_weather", '{"city": ')]


@pytest.mark.parametrize("cls,text,content,calls", CASES)
def test_streaming_matches_parse(cls, text, content, calls):
    for step in (1, 2, 3, 5, 8, 13, len(text)):
        pieces = _stream(cls, text, step)
        got_calls = _calls(pieces)
        got_text = "".join(p for p in pieces if isinstance(p, str))
        assert got_calls == calls, step
        if calls:
            assert (got_text.strip() or None) == content, step
        else:
            assert got_text == text, step  # no call: every character, in order


def test_content_streams_before_the_calls():
    stream = StreamingToolParser(HermesParser())
    assert stream.feed("Checking <tool") == ["Checking "]  # "<tool" may open a block
    assert stream.feed('_call>{"name": "get_weather", "arguments": {"city": ') == \
        [CallHeader("get_weather"), ArgsDelta('{"city": ')]  # the name once complete
    assert stream.feed('"Par') == [ArgsDelta('"Par')]
    assert stream.feed('is"}') == [ArgsDelta('is"}')]  # the arguments' own closing brace
    assert stream.feed('}</tool_call>') == []


def test_forced_choices():
    assert RequiredParser().parse('[{"name": "get_weather", "arguments": {"city": "Paris"}}]'
                                  ).calls == [WEATHER]
    assert RequiredParser().parse('not json').content == "not json"
    named = NamedParser("get_weather").parse('{"city": "Paris"}')
    assert named.calls == [WEATHER] and named.content is None
    assert NamedParser("get_weather").parse('[1]').calls == []


@pytest.mark.parametrize("cls", [HermesParser, Llama3JsonParser, MistralParser])
def test_linear_time_on_hostile_output(cls):
    """Megabytes of near-misses parse in well under a second (no backtracking, no eval)."""
    hostile = ["<tool_call>{" * 100_000, "[" * 200_000, '{"name": "f", "parameters": '
               + "[" * 100_000, "<tool_call>" + json.dumps({"name": "f", "arguments": {
                   "x": "y" * 1_000_000}}) + "</tool_call>"]
    for text in hostile:
        start = time.perf_counter()
        cls().parse(text)
        assert time.perf_counter() - start < 1.0


@pytest.mark.parametrize("cls", [HermesParser, Llama3JsonParser, MistralParser])
def test_streaming_a_long_call_is_linear(cls):
    """A call streamed in small deltas is not rescanned per delta: 50,000 deltas of a call
    that never closes take well under a second (Hermes sends each as an arguments piece, the
    others hold the call until the end)."""
    stream = StreamingToolParser(cls())
    head = {"hermes": '<tool_call>{"name": "f", "arguments": {"x": "',
            "llama3_json": '{"name": "f", "parameters": {"x": "',
            "mistral": '[{"name": "f", "arguments": {"x": "'}[cls.name]
    start = time.perf_counter()
    stream.feed(head)
    each = [ArgsDelta("abcd")] if cls is HermesParser else []
    for _ in range(50_000):
        assert stream.feed("abcd") == each
    rest = stream.finish()
    if cls is HermesParser:
        assert rest == []  # the call had begun: it stays a call, arguments as streamed
    else:
        assert "".join(p for p in rest if isinstance(p, str)).startswith(head)
    assert time.perf_counter() - start < 1.0


def test_streamed_arguments_equal_the_written_text_at_random_splits():
    """Random arguments (strings full of quotes, backslashes, braces, tags and non-ASCII),
    formatted several ways and cut at random points: the streamed pieces join to exactly the
    text the model wrote, which is also what the whole-text parse returns."""
    rng = random.Random(14)
    alphabet = ['"', "\\\\", "{", "}", "[", "]", ":", ",", "<", "/", "é", "\\n", " ", "a", "7"]

    def value(depth: int):
        kind = rng.randrange(5 if depth < 3 else 3)
        if kind == 0:
            return "".join(rng.choice(alphabet) for _ in range(rng.randrange(12)))
        if kind == 1:
            return rng.choice([0, -1.5, True, None, 10 ** 20])
        if kind == 2:
            return [value(depth + 1) for _ in range(rng.randrange(3))]
        return {f"k{i}{rng.choice(alphabet)}": value(depth + 1) for i in range(rng.randrange(4))}

    for trial in range(60):
        args = {f"p{i}": value(0) for i in range(rng.randrange(1, 4))}
        style = [dict(), dict(separators=(",", ":")), dict(indent=1),
                 dict(ensure_ascii=False)][trial % 4]
        written = json.dumps(args, **style)
        text = (f'pre<tool_call>\n{{"name": "f{trial}", "arguments": {written}}}\n</tool_call>'
                if trial % 3 else f'<tool_call>[{{"arguments": {written}, "name": "g"}}]')
        parsed = HermesParser().parse(text)
        assert [c.arguments for c in parsed.calls] == [written]
        cuts = sorted(rng.sample(range(1, len(text)), min(len(text) - 1, rng.randrange(1, 40))))
        stream, pieces = StreamingToolParser(HermesParser()), []
        for a, b in zip([0, *cuts], [*cuts, len(text)]):
            pieces += stream.feed(text[a:b])
        assert _calls(pieces + stream.finish()) == parsed.calls
