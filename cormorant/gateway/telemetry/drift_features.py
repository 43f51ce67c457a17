"""Drift features of one finished request: sizes, finish, refusal, confidence and script mix.

A `FeatureRow` holds numbers and categories only, never text: what drift monitoring keeps of
a request. `FEATURES` names every feature and how it is compared (gateway.telemetry.drift):
numeric ones by PSI and KS, categorical ones and mixes by Jensen-Shannon.
- prompt_tokens, output_tokens: lengths in tokens.
- mean_logprob: mean logprob of the generated tokens (the model's own confidence), when the
  engine returned the chosen tokens' logprobs.
- finish_reason: stop | length | abort.
- empty_output / refusal: "yes" | "no"; a refusal is an output that opens with one of
  `REFUSAL_PHRASES` (case-folded, within its first REFUSAL_PREFIX_CHARS characters).
- prompt_script: a cheap language guess, the script most letters of the prompt are written in
  (latin, cyrillic, greek, arabic, hebrew, cjk, devanagari, other; none without letters).
- prompt_charclass: the prompt's character mix, fractions of those scripts plus digit,
  punct and space.
Only the first MAX_SCAN_CHARS characters of a text are scanned: cost stays bounded.
Imports the stdlib only.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

MAX_SCAN_CHARS = 4096
REFUSAL_PREFIX_CHARS = 160
REFUSAL_PHRASES = ("i'm sorry", "i am sorry", "sorry, but", "i cannot", "i can't", "i can not",
                   "i'm unable", "i am unable", "i won't", "i will not", "as an ai",
                   "i'm not able to", "i am not able to", "i must decline")

NUMERIC = ("prompt_tokens", "output_tokens", "mean_logprob")
CATEGORICAL = ("finish_reason", "empty_output", "refusal", "prompt_script")
MIXES = ("prompt_charclass",)
FEATURES = NUMERIC + CATEGORICAL + MIXES

# Unicode blocks of the scripts we tell apart: (first, last, name).
_SCRIPT_RANGES = ((0x00C0, 0x024F, "latin"), (0x1E00, 0x1EFF, "latin"),
                  (0x0370, 0x03FF, "greek"), (0x0400, 0x052F, "cyrillic"),
                  (0x0590, 0x05FF, "hebrew"), (0x0600, 0x06FF, "arabic"),
                  (0x0750, 0x077F, "arabic"), (0x0900, 0x097F, "devanagari"),
                  (0x3040, 0x30FF, "cjk"), (0x3400, 0x4DBF, "cjk"), (0x4E00, 0x9FFF, "cjk"),
                  (0xAC00, 0xD7AF, "cjk"), (0xF900, 0xFAFF, "cjk"))
SCRIPTS = ("latin", "cyrillic", "greek", "arabic", "hebrew", "cjk", "devanagari", "other")


def _ascii_class(code: int) -> str:
    ch = chr(code)
    if ch.isalpha():
        return "latin"
    if ch.isdigit():
        return "digit"
    return "space" if ch.isspace() else "punct"


_ASCII = tuple(_ascii_class(i) for i in range(128))


def char_class(ch: str) -> str:
    """The class of one character: a script name, digit, punct or space."""
    code = ord(ch)
    if code < 128:
        return _ASCII[code]
    for first, last, name in _SCRIPT_RANGES:
        if first <= code <= last:
            return name
    if ch.isalpha():
        return "other"
    if ch.isdigit():
        return "digit"
    return "space" if ch.isspace() else "punct"


def char_mix(text: str) -> dict[str, float]:
    """Fractions of each character class in (the head of) `text`; empty for empty text."""
    head = text[:MAX_SCAN_CHARS]
    if not head:
        return {}
    counts = Counter(map(char_class, head))
    return {name: count / len(head) for name, count in counts.items()}


def dominant_script(mix: dict[str, float]) -> str:
    """The script most letters are written in, or none when there are no letters."""
    letters = [(share, name) for name, share in mix.items() if name in SCRIPTS]
    return max(letters)[1] if letters else "none"


def is_refusal(output: str) -> bool:
    head = output[:REFUSAL_PREFIX_CHARS].casefold().replace("\u2019", "'")
    return any(phrase in head for phrase in REFUSAL_PHRASES)


@dataclass
class FeatureRow:
    """The features of one generated output (one choice) and the prompt it answered."""

    numeric: dict[str, float] = field(default_factory=dict)
    categorical: dict[str, str] = field(default_factory=dict)
    mixes: dict[str, dict[str, float]] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {**self.numeric, **self.categorical, **self.mixes}

    @classmethod
    def from_dict(cls, data: dict) -> "FeatureRow":
        """From a pinned reference line: feature values, or `prompt`/`output` text to derive
        them from (the text itself is dropped). Unknown or ill-typed keys raise ValueError."""
        row = features(prompt=data.get("prompt"), output=data.get("output"),
                       finish_reason=data.get("finish_reason"))
        for name in NUMERIC:
            value = data.get(name)
            if value is not None:
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise ValueError(f"{name} must be a number")
                row.numeric[name] = float(value)
        for name in CATEGORICAL:
            if isinstance(data.get(name), str):
                row.categorical[name] = data[name]
        mix = data.get("prompt_charclass")
        if isinstance(mix, dict):
            row.mixes["prompt_charclass"] = {str(k): float(v) for k, v in mix.items()}
        unknown = set(data) - set(FEATURES) - {"prompt", "output", "model"}
        if unknown:
            raise ValueError(f"unknown keys {sorted(unknown)[:5]}")
        return row


def features(*, prompt: str | None = None, output: str | None = None,
             prompt_tokens: int | None = None, output_tokens: int | None = None,
             finish_reason: str | None = None, mean_logprob: float | None = None) -> FeatureRow:
    """The row of one output; whatever is None is left out (compared where both sides have it)."""
    row = FeatureRow()
    for name, value in (("prompt_tokens", prompt_tokens), ("output_tokens", output_tokens),
                        ("mean_logprob", mean_logprob)):
        if value is not None:
            row.numeric[name] = float(value)
    if finish_reason is not None:
        row.categorical["finish_reason"] = finish_reason
    if output is not None:
        row.categorical["empty_output"] = "no" if output.strip() else "yes"
        row.categorical["refusal"] = "yes" if is_refusal(output) else "no"
    if prompt is not None:
        mix = char_mix(prompt)
        row.mixes["prompt_charclass"] = mix
        row.categorical["prompt_script"] = dominant_script(mix)
    return row
