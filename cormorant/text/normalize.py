"""Optional input normalization applied to prompts before tokenization.

Two independent switches, both off by default (EngineConfig.normalize_nfc and
EngineConfig.strip_control_chars), because any rewrite of the prompt changes what the model
sees and defeats prefix caching against un-normalized clients:

* NFC: compose "e" + U+0301 into "é", so visually equal prompts tokenize the same.
* Strip control characters: drop Unicode category Cc (C0 controls, DEL, C1 controls) except
  \\n, \\t and \\r, which are real text. Format characters (Cf) such as the zero-width joiner
  are kept: emoji sequences and many scripts need them.

Imports: the standard library (and config for the helper that reads the flags).
"""
from __future__ import annotations

import unicodedata
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cormorant.config import EngineConfig

_KEPT_CONTROLS = frozenset("\n\t\r")
# str.translate table deleting every Cc character but the kept ones: one C-speed pass.
_CONTROL_DELETE_TABLE = {
    cp: None
    for cp in (*range(0x00, 0x20), 0x7F, *range(0x80, 0xA0))
    if chr(cp) not in _KEPT_CONTROLS
}


def normalize_text(text: str, *, nfc: bool = False, strip_control: bool = False) -> str:
    """Apply the enabled normalizations to `text` (NFC first, then control stripping)."""
    if nfc:
        text = unicodedata.normalize("NFC", text)
    if strip_control:
        text = text.translate(_CONTROL_DELETE_TABLE)
    return text


def normalize_messages(messages: list[dict], *, nfc: bool = False,
                       strip_control: bool = False) -> list[dict]:
    """Normalize the text of chat messages (string content and {"type": "text"} parts).

    Returns new message dicts; the caller's are left untouched.
    """
    if not (nfc or strip_control):
        return messages
    flags = {"nfc": nfc, "strip_control": strip_control}
    out = []
    for message in messages:
        message = dict(message)
        content = message.get("content")
        if isinstance(content, str):
            message["content"] = normalize_text(content, **flags)
        elif isinstance(content, list):
            message["content"] = [_normalize_part(part, flags) for part in content]
        out.append(message)
    return out


def _normalize_part(part: Any, flags: dict) -> Any:
    if isinstance(part, dict) and isinstance(part.get("text"), str):
        return {**part, "text": normalize_text(part["text"], **flags)}
    return part


def normalizer_from_config(config: EngineConfig) -> Callable[[str], str] | None:
    """A text -> text function for the config's flags, or None when both are off (so callers
    can skip the call entirely)."""
    nfc, strip = config.normalize_nfc, config.strip_control_chars
    if not (nfc or strip):
        return None
    return lambda text: normalize_text(text, nfc=nfc, strip_control=strip)
