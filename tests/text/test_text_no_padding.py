"""A tokenizer.json that asks for padding or truncation must not pad or cut prompts."""
from __future__ import annotations

import json

import tiny
from cormorant.text.tokenizer import load_tokenizer


def test_padding_and_truncation_in_tokenizer_json_are_ignored(tmp_path):
    tiny.save_tokenizer(tmp_path)
    path = tmp_path / "tokenizer.json"
    data = json.loads(path.read_text())
    data["padding"] = {"strategy": {"Fixed": 64}, "direction": "Right", "pad_to_multiple_of": None,
                       "pad_id": 0, "pad_type_id": 0, "pad_token": "<|endoftext|>"}
    data["truncation"] = {"direction": "Right", "max_length": 4, "strategy": "LongestFirst",
                          "stride": 0}
    path.write_text(json.dumps(data))
    tok = load_tokenizer(str(tmp_path))
    ids = tok.encode("The quick brown fox jumps over the lazy dog.")
    assert 4 < len(ids) < 64
    assert tok.decode(ids) == "The quick brown fox jumps over the lazy dog."
