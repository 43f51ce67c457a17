"""Constraints to llguidance grammars: the bounds, the conversion and the validation.

`grammar_for(spec, limits)` turns a `StructuredOutputs` (JSON schema, any JSON object, regex,
choice, Lark/GBNF grammar) into llguidance's grammar text after checking the request bounds;
`validate(spec, limits)` also runs llguidance's own check (no tokenizer needed) and is what
the server calls, off its event loop, with `limits.compile_timeout_s`. Every breach raises
GrammarError naming the limit, which the server turns into a 400.

Bounds are checked on the text before it is parsed: a schema's nesting depth by a linear scan
(a depth-10,000 schema never reaches a recursive parser), sizes in bytes. llguidance's parser
limits (lexer fuel, items per step, grammar size) bound the rest, so a catastrophic regex or
a huge grammar fails fast instead of pinning a core.

Imports llguidance (no torch) and sampling_params only.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import llguidance

from cormorant.sampling_params import StructuredOutputs


@dataclass(frozen=True)
class GrammarLimits:
    max_schema_bytes: int = 64 * 1024
    max_schema_depth: int = 64
    max_regex_bytes: int = 16 * 1024
    max_grammar_bytes: int = 256 * 1024
    max_choices: int = 1000
    max_choice_bytes: int = 64 * 1024
    compile_timeout_s: float = 2.0
    cache_size: int = 256  # compiled grammars kept per model (LRU)

    def parser_limits(self) -> llguidance.LLParserLimits:
        # llguidance's defaults, tightened where a request could make one step slow.
        return llguidance.LLParserLimits(initial_lexer_fuel=1_000_000, step_lexer_fuel=200_000,
                                         step_max_items=50_000, max_grammar_size=200_000,
                                         verbose_errors=False)


class GrammarError(ValueError):
    """A constraint the server refuses; `limit` names the bound it broke (or 'grammar')."""

    def __init__(self, limit: str, message: str) -> None:
        super().__init__(message)
        self.limit = limit


def spec_digest(spec: StructuredOutputs) -> str:
    """The compile cache key: equal specs share one compiled grammar."""
    text = json.dumps([spec.kind(), spec.json, spec.json_object, spec.regex, spec.choice,
                       spec.grammar, spec.disable_any_whitespace])
    return hashlib.sha256(text.encode()).hexdigest()


def grammar_for(spec: StructuredOutputs, limits: GrammarLimits = GrammarLimits()) -> str:
    """llguidance grammar text for the spec; GrammarError on a breached bound or bad input."""
    kind = spec.kind()
    if kind in ("json", "json_object"):
        schema = spec.json if kind == "json" else '{"type": "object"}'
        if not isinstance(schema, str):  # offline callers may pass the schema as a dict
            schema = json.dumps(schema)
        _check_size("max_schema_bytes", schema, limits.max_schema_bytes)
        _check_depth(schema, limits.max_schema_depth)
        # Fixed separators, never free whitespace: a small model can loop on whitespace
        # forever (a known vLLM problem); disable_any_whitespace drops the spaces too.
        compact = spec.disable_any_whitespace
        options = {"whitespace_flexible": False, "item_separator": "," if compact else ", ",
                   "key_separator": ":" if compact else ": "}
        try:
            return llguidance.LLMatcher.grammar_from_json_schema(schema, overrides=options)
        except ValueError as e:
            raise GrammarError("grammar", f"invalid JSON schema: {e}") from None
    if kind == "regex":
        _check_size("max_regex_bytes", spec.regex, limits.max_regex_bytes)
        return llguidance.LLMatcher.grammar_from_regex(spec.regex)
    if kind == "choice":
        _check_choices(spec.choice, limits)
        lark = "start: " + " | ".join(json.dumps(choice) for choice in spec.choice)
        return llguidance.LLMatcher.grammar_from_lark(lark)
    _check_size("max_grammar_bytes", spec.grammar, limits.max_grammar_bytes)
    try:
        return llguidance.grammar_from("grammar", spec.grammar)
    except (ValueError, RecursionError) as e:
        raise GrammarError("grammar", f"invalid grammar: {str(e)[:300]}") from None


def validate(spec: StructuredOutputs, limits: GrammarLimits = GrammarLimits()) -> str:
    """The grammar text, checked by llguidance (without a tokenizer); GrammarError if bad."""
    grammar = grammar_for(spec, limits)
    is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(
        grammar, None, limits=limits.parser_limits())
    if is_error:
        raise GrammarError("grammar", f"invalid {spec.kind()} constraint: "
                           f"{(messages[0] if messages else 'rejected')[:300]}")
    return grammar


def _check_size(limit: str, text: str, max_bytes: int) -> None:
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise GrammarError(limit, f"the constraint is {size} bytes, over the limit "
                           f"{limit}={max_bytes}")


def _check_depth(text: str, max_depth: int) -> None:
    """JSON nesting depth by one linear scan (brackets outside strings)."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > max_depth:
                    raise GrammarError("max_schema_depth", "the JSON schema nests deeper than "
                                       f"the limit max_schema_depth={max_depth}")
        elif char in "]}":
            depth -= 1


def _check_choices(choices: list[str], limits: GrammarLimits) -> None:
    if not choices:
        raise GrammarError("grammar", "choice needs at least one string")
    if len(choices) > limits.max_choices:
        raise GrammarError("max_choices", f"{len(choices)} choices, over the limit "
                           f"max_choices={limits.max_choices}")
    if not all(isinstance(c, str) for c in choices):
        raise GrammarError("grammar", "every choice must be a string")
    _check_size("max_choice_bytes", "".join(choices), limits.max_choice_bytes)
