"""Input normalization: NFC and control-character stripping, both off by default."""
from __future__ import annotations

from cormorant.config import EngineConfig
from cormorant.text.normalize import normalize_messages, normalize_text, normalizer_from_config

DECOMPOSED = "Cafe\u0301"  # "e" + combining acute
CONTROLS = "a\x00b\x07c\x1bd\x7fe\x85f\x9fg"


def test_defaults_leave_text_untouched():
    assert normalize_text(DECOMPOSED) == DECOMPOSED
    assert normalize_text(CONTROLS) == CONTROLS


def test_nfc_composes():
    assert normalize_text(DECOMPOSED, nfc=True) == "Café"
    assert len(normalize_text(DECOMPOSED, nfc=True)) == 4


def test_strip_controls_keeps_newline_tab_cr_and_format_chars():
    assert normalize_text(CONTROLS, strip_control=True) == "abcdefg"
    kept = "line\nnext\tcol\r\n👩\u200d👩\u200d👧 \u200bzw"  # ZWJ and ZWSP are Cf, not Cc
    assert normalize_text(kept, strip_control=True) == kept


def test_both_flags_compose():
    assert normalize_text("Cafe\u0301\x00!", nfc=True, strip_control=True) == "Café!"


def test_messages_normalized_without_mutating_input():
    messages = [{"role": "user", "content": "x\x00" + DECOMPOSED},
                {"role": "user", "content": [{"type": "text", "text": "\x07hi"},
                                             {"type": "image_url", "image_url": {"url": "u"}}]},
                {"role": "assistant", "content": None}]
    out = normalize_messages(messages, nfc=True, strip_control=True)
    assert out[0]["content"] == "xCafé"
    assert out[1]["content"][0] == {"type": "text", "text": "hi"}
    assert out[1]["content"][1] == messages[1]["content"][1]
    assert out[2]["content"] is None
    assert messages[0]["content"] == "x\x00" + DECOMPOSED  # input untouched
    assert normalize_messages(messages) is messages  # flags off: no copy at all


def test_normalizer_from_config():
    assert normalizer_from_config(EngineConfig(model="m")) is None
    fn = normalizer_from_config(EngineConfig(model="m", normalize_nfc=True,
                                             strip_control_chars=True))
    assert fn("Cafe\u0301\x1b") == "Café"
