"""The metadata reader on malformed GGUF headers: absurd counts and truncated entries fail at
once with a GGUFMetadataError naming the file and the field."""
from __future__ import annotations

import struct
import time

import pytest

from cormorant.text.gguf_metadata import GGUFMetadataError, read_gguf_metadata


def _str(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("<Q", len(raw)) + raw


def header(num_tensors: int, num_kv: int) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", 3, num_tensors, num_kv)


def string_kv(key: str, value: str) -> bytes:
    return _str(key) + struct.pack("<I", 8) + _str(value)


@pytest.mark.parametrize("data, field", [
    (header(0, 1 << 60) + string_kv("a", "b"), "metadata_kv_count"),
    (header(1 << 58, 1) + string_kv("a", "b"), "tensor_count"),
    # A string array claiming 2^61 entries (not decoded: only its length is skipped).
    (header(0, 1) + _str("tokenizer.ggml.merges") + struct.pack("<IIQ", 9, 8, 1 << 61)
     + _str("x") * 4, "metadata 'tokenizer.ggml.merges'"),
    # A nested array claiming 2^50 arrays.
    (header(0, 1) + _str("t.nested") + struct.pack("<IIQ", 9, 9, 1 << 50) + b"\0" * 64,
     "metadata 't.nested'"),
    (header(0, 2) + string_kv("general.name", "ok") + _str("cut")
     + struct.pack("<IQ", 8, 1000), "metadata 'cut'"),  # the string runs past the end
    (header(0, 1) + struct.pack("<Q", 1 << 40) + b"key", "metadata[0]"),
], ids=["kv-count", "tensor-count", "string-array-count", "nested-array-count",
        "truncated-value", "key-length"])
def test_malformed_metadata_names_file_and_field(tmp_path, data, field):
    path = tmp_path / "bad.gguf"
    path.write_bytes(data + b"\0" * 64)
    start = time.monotonic()
    with pytest.raises(GGUFMetadataError) as info:
        read_gguf_metadata(str(path), string_arrays=())
    assert time.monotonic() - start < 1.0  # refused from the header, not by looping
    message = str(info.value)
    assert str(path) in message and field in message, message
