"""The JSON fast path of constrained decoding: xgrammar matchers for the schemas it keeps exact.

llguidance stays the validator and the engine of every other constraint (text.grammar,
text.guidance_backend); a JSON schema or `json_object` whose keywords xgrammar enforces gets
an xgrammar matcher instead, because its masks are ~10-20x cheaper where outputs are
complete JSON objects (keys, numbers, length-bounded strings: docs/structured-output.md).

Two guards keep its output valid JSON that the schema accepts:

- `eligible(schema)`: every keyword is one xgrammar enforces (`KEYWORDS`; e.g. it ignores
  `minProperties` and `uniqueItems`), and every `pattern` is one its JSON-string handling
  keeps escaped (a pattern that can match a quote, a backslash or a control character takes
  llguidance).
- `json_grammar(...)`: xgrammar 0.2.9 writes the character class of a length-bounded string as
  `[^"\\\r\n]`, which admits raw control characters (invalid JSON), and both its string
  classes admit the bytes of UTF-16 surrogates (not UTF-8); they are rewritten to exclude
  U+0000-U+001F and U+D800-U+DFFF, and the grammar is compiled from that text.

Imports xgrammar (which imports torch) lazily; numpy bitmasks, never torch tensors here.
"""
from __future__ import annotations

import json
import re
from typing import Any

# Keywords xgrammar 0.2.9 enforces as JSON Schema means them (checked by random walks and
# the property test, tests/text/test_xgrammar_json.py); annotations it may ignore.
KEYWORDS = frozenset({
    "type", "properties", "required", "additionalProperties", "items", "prefixItems",
    "minItems", "maxItems", "enum", "const", "minimum", "maximum", "exclusiveMinimum",
    "exclusiveMaximum", "minLength", "maxLength", "pattern", "anyOf", "$ref", "$defs",
    "definitions", "title", "description", "default", "examples", "$schema", "$id",
    "$comment"})
_SUBSCHEMA_MAPS = ("properties", "$defs", "definitions")
_SUBSCHEMA_LISTS = ("anyOf", "prefixItems")
# A pattern of these characters and escapes matches only characters it names: never a
# quote, a backslash or a control character (xgrammar would write them raw; `\s` matches a
# newline), nor a UTF-16 surrogate (`.`, `[^...]`, `\D` and `\W` let xgrammar write one, which
# is not UTF-8).
_SAFE_PATTERN = re.compile(r"^(?:[A-Za-z0-9^$*+?()\[\]{}|,:;@_/ =#%&!<>~'-]"
                           r"|\\[dw.\-+()\[\]{}*?|^$/])*$")
# xgrammar 0.2.9's character classes of a JSON string: bounded strings, then free ones. The
# first admits raw control characters, both admit the bytes of UTF-16 surrogates (ED A0 80:
# not UTF-8, three replacement characters once decoded).
_STRING_CLASSES = (r'[^\"\\\r\n]', r'[^\0-\x1f\"\\\r\n]')
_JSON_STRING_CLASS = r'[^\0-\x1f\"\\\uD800-\uDFFF]'


def eligible(schema: Any, depth: int = 0) -> bool:
    """Whether xgrammar enforces every keyword of this (already validated) schema."""
    if isinstance(schema, bool):
        return True
    if not isinstance(schema, dict) or depth > 64:
        return False
    for key, value in schema.items():
        if key not in KEYWORDS:
            return False
        if key == "pattern" and not (isinstance(value, str) and _SAFE_PATTERN.match(value)
                                     and "[^" not in value):
            return False
        if key in _SUBSCHEMA_MAPS:
            if not isinstance(value, dict) or not all(
                    eligible(sub, depth + 1) for sub in value.values()):
                return False
        elif key in _SUBSCHEMA_LISTS:
            if not isinstance(value, list) or not all(eligible(s, depth + 1) for s in value):
                return False
        elif key in ("items", "additionalProperties") and not eligible(value, depth + 1):
            return False
        elif key == "$ref" and not (isinstance(value, str) and value.startswith("#/")):
            return False
    return True


def schema_text(kind: str, schema: Any) -> str | None:
    """The schema text to compile with xgrammar, or None when llguidance must take it."""
    if kind == "json_object":
        return '{"type": "object"}'
    if kind != "json":
        return None
    try:
        parsed = json.loads(schema) if isinstance(schema, str) else schema
    except ValueError:
        return None
    return json.dumps(parsed) if eligible(parsed) else None


def clear_spare_bits(bits, vocab_size: int, rows=slice(None)) -> None:
    """xgrammar's fill leaves the spare bits of a row's last word set (tokens past the
    vocabulary); clear them in the given rows of a [R, W] int32 numpy bitmask."""
    if vocab_size % 32:
        import numpy as np

        bits.view(np.uint32)[rows, -1] &= np.uint32((1 << (vocab_size % 32)) - 1)


def json_grammar(schema: str, compact: bool):
    """xgrammar's Grammar for the schema: fixed separators, no free whitespace (as the
    llguidance path), strings never holding a raw control character."""
    import xgrammar as xgr

    separators = (",", ":") if compact else (", ", ": ")
    # strict_mode off: an absent additionalProperties allows them, as JSON Schema says.
    grammar = xgr.Grammar.from_json_schema(schema, any_whitespace=False,
                                           separators=separators, strict_mode=False)
    text = str(grammar)
    for theirs in _STRING_CLASSES:
        text = text.replace(theirs, _JSON_STRING_CLASS)
    return xgr.Grammar.from_ebnf(text)
