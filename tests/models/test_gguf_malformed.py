"""Malformed GGUF files, written byte by byte: every absurd header field (counts, dimensions,
offsets, a truncated file) fails with a GGUFFormatError naming the file and the field, before
the gguf package's reader trusts it; a well-formed file of the same shape loads."""
from __future__ import annotations

import struct

import pytest

from cormorant.models.gguf_loader import GGUFFormatError, open_gguf

F32 = 0


def _str(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("<Q", len(raw)) + raw


def gguf_bytes(*, tensor_count: int | None = None, kv_count: int | None = None,
               dims: tuple[int, ...] = (8,), n_dims: int | None = None,
               offset: int = 0, data_bytes: int = 32) -> bytes:
    """A GGUF v3 with general.architecture and one F32 tensor 'w'; any field may lie."""
    kv = _str("general.architecture") + struct.pack("<I", 8) + _str("llama")
    info = (_str("w") + struct.pack("<I", len(dims) if n_dims is None else n_dims)
            + b"".join(struct.pack("<Q", d) for d in dims) + struct.pack("<IQ", F32, offset))
    head = b"GGUF" + struct.pack("<IQQ", 3, 1 if tensor_count is None else tensor_count,
                                 1 if kv_count is None else kv_count)
    body = head + kv + info
    body += b"\0" * (-len(body) % 32)  # data starts at the default alignment
    return body + b"\0" * data_bytes


@pytest.fixture
def write(tmp_path):
    def write_file(data: bytes) -> str:
        path = tmp_path / "m.gguf"
        path.write_bytes(data)
        return str(path)
    return write_file


def test_well_formed_file_opens(write):
    reader = open_gguf(write(gguf_bytes()))
    assert [t.name for t in reader.tensors] == ["w"]
    assert int(reader.tensors[0].n_elements) == 8


@pytest.mark.parametrize("data, field", [
    (gguf_bytes(tensor_count=1 << 60), "tensor_count"),
    (gguf_bytes(kv_count=1 << 61), "metadata_kv_count"),
    (gguf_bytes(n_dims=1000), "n_dims"),
    (gguf_bytes(dims=(1 << 40,)), "dims[0]"),
    (gguf_bytes(dims=(8, 1 << 40, 1 << 40)), "dims[1]"),
    (gguf_bytes(dims=(0,)), "dims[0]"),
    (gguf_bytes(offset=1 << 50), "offset"),
    (gguf_bytes(offset=8), "offset"),  # 32 bytes of data from 8: 8 past the end
    (gguf_bytes(data_bytes=16), "offset"),  # the data itself is cut short
    (gguf_bytes()[:40], "metadata"),  # truncated inside the metadata
    (gguf_bytes()[:20], "metadata_kv_count"),  # truncated inside the header
    (b"GGUF" + struct.pack("<I", 7) + b"\0" * 16, "version"),
    (b"NOPE" + b"\0" * 20, "magic"),
], ids=["tensor-count", "kv-count", "n-dims", "dim-2-40", "dims-product", "dim-zero",
        "offset-huge", "offset-past-end", "data-truncated", "truncated-metadata",
        "truncated-header", "version", "magic"])
def test_malformed_header_fails_naming_file_and_field(write, data, field):
    path = write(data)
    with pytest.raises(GGUFFormatError) as info:
        open_gguf(path)
    message = str(info.value)
    assert path in message and field in message, message


def test_empty_file(write):
    with pytest.raises(GGUFFormatError, match="empty file"):
        open_gguf(write(b""))
