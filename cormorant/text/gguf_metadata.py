"""A small, fast reader for the key/value metadata at the head of a GGUF file.

Reads only the metadata section (never the tensor table or tensor data), with `struct` over a
memory map, so building a tokenizer from a 100 MB GGUF costs a few hundred milliseconds rather
than the seconds `gguf.GGUFReader` spends making a numpy view per array element.

Imports: the standard library only (no numpy, no torch), so text/ stays light. The format
follows llama.cpp's gguf spec (versions 2 and 3, little-endian).
"""
from __future__ import annotations

import mmap
import struct
import sys
from array import array
from collections.abc import Container

GGUF_MAGIC = b"GGUF"
_SUPPORTED_VERSIONS = (2, 3)

# Fixed-width value types (gguf spec: GGUFValueType).
_SCALAR_FORMATS = {
    0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d",
}
_TYPE_STRING = 8
_TYPE_ARRAY = 9

# Token types llama.cpp stores in `tokenizer.ggml.token_type`.
TOKEN_TYPE_NORMAL = 1
TOKEN_TYPE_UNKNOWN = 2
TOKEN_TYPE_CONTROL = 3
TOKEN_TYPE_USER_DEFINED = 4
TOKEN_TYPE_UNUSED = 5
TOKEN_TYPE_BYTE = 6


class GGUFMetadataError(ValueError):
    """The file is not a GGUF we can read (bad magic, version, or truncated metadata)."""


def read_gguf_metadata(path: str, string_arrays: Container[str] | None = None) -> dict:
    """Return {key: value} for every metadata entry of the GGUF file at `path`.

    Scalars come back as Python ints/floats/bools/strs and numeric arrays as lists. String
    arrays are decoded only when their key is in `string_arrays` (None: all of them); the
    others come back as their element count, because decoding a 150k-entry vocabulary that
    nobody asked for is most of the cost of reading the header.
    """
    with open(path, "rb") as f:
        try:
            blob = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError as exc:  # zero-length file
            raise GGUFMetadataError(f"{path}: empty file, not a GGUF") from exc
    try:
        # mmap itself, not a memoryview: slices are bytes copies, so no buffer export can
        # outlive the parse (an exception's traceback would otherwise block close()).
        return _parse(blob, path, string_arrays)
    except (struct.error, IndexError, UnicodeDecodeError) as exc:
        raise GGUFMetadataError(f"{path}: truncated or corrupt GGUF metadata ({exc})") from exc
    finally:
        blob.close()


def _parse(buf: mmap.mmap, path: str, string_arrays: Container[str] | None) -> dict:
    if bytes(buf[:4]) != GGUF_MAGIC:
        raise GGUFMetadataError(f"{path}: missing GGUF magic bytes, not a GGUF file")
    (version,) = struct.unpack_from("<I", buf, 4)
    if version not in _SUPPORTED_VERSIONS:
        # A big-endian file reads as a huge little-endian version number.
        raise GGUFMetadataError(
            f"{path}: GGUF version {version} is not supported (need little-endian v2 or v3)")
    num_tensors, num_kv = struct.unpack_from("<QQ", buf, 8)
    pos = 24
    # Each entry takes 13 bytes at least (key length, type, a byte), each tensor info 24.
    for field, count, size in (("metadata_kv_count", num_kv, 13),
                               ("tensor_count", num_tensors, 24)):
        if count * size > len(buf) - pos:
            raise GGUFMetadataError(f"{path}: GGUF header field {field} is {count}, which "
                                    f"cannot fit in a {len(buf)}-byte file (truncated or "
                                    "corrupt)")
    metadata: dict = {}
    for i in range(num_kv):
        field = f"metadata[{i}]"
        try:
            key, pos = _read_str(buf, pos)
            field = f"metadata {key!r}"
            (value_type,) = struct.unpack_from("<I", buf, pos)
            keep = string_arrays is None or key in string_arrays
            metadata[key], pos = _read_value(buf, pos + 4, value_type, keep)
        except (struct.error, IndexError, UnicodeDecodeError, GGUFMetadataError) as exc:
            raise GGUFMetadataError(f"{path}: GGUF header field {field}: truncated or corrupt "
                                    f"({exc})") from None
    return metadata


def _read_str(buf: mmap.mmap, pos: int) -> tuple[str, int]:
    (length,) = struct.unpack_from("<Q", buf, pos)
    end = pos + 8 + length
    if end > len(buf):
        raise struct.error("string runs past the end of the file")
    return buf[pos + 8:end].decode("utf-8"), end


def _read_value(buf: mmap.mmap, pos: int, value_type: int, keep_strings: bool):
    fmt = _SCALAR_FORMATS.get(value_type)
    if fmt is not None:
        (value,) = struct.unpack_from("<" + fmt, buf, pos)
        return value, pos + struct.calcsize(fmt)
    if value_type == _TYPE_STRING:
        return _read_str(buf, pos)
    if value_type == _TYPE_ARRAY:
        elem_type, count = struct.unpack_from("<IQ", buf, pos)
        return _read_array(buf, pos + 12, elem_type, count, keep_strings)
    raise GGUFMetadataError(f"unknown GGUF metadata value type {value_type}")


def _read_array(buf: mmap.mmap, pos: int, elem_type: int, count: int, keep_strings: bool):
    fmt = _SCALAR_FORMATS.get(elem_type)
    if fmt is not None:
        values = array("B" if fmt == "?" else fmt)  # array() has no bool code
        nbytes = count * values.itemsize
        if pos + nbytes > len(buf):
            raise struct.error("array runs past the end of the file")
        values.frombytes(buf[pos:pos + nbytes])
        if values.itemsize > 1 and sys.byteorder == "big":
            values.byteswap()  # GGUF is little-endian; only matters on a big-endian host
        out = values.tolist()
        return ([bool(v) for v in out] if fmt == "?" else out), pos + nbytes
    if count * (8 if elem_type == _TYPE_STRING else 12) > len(buf) - pos:
        raise GGUFMetadataError(f"an array of {count} entries cannot fit in the file")
    if elem_type == _TYPE_STRING:
        return _read_str_array(buf, pos, count, keep_strings)
    if elem_type == _TYPE_ARRAY:
        out = []
        for _ in range(count):  # nested arrays are rare and small: no fast path
            inner_type, inner_count = struct.unpack_from("<IQ", buf, pos)
            value, pos = _read_array(buf, pos + 12, inner_type, inner_count, keep_strings)
            out.append(value)
        return out, pos
    raise GGUFMetadataError(f"unknown GGUF array element type {elem_type}")


def _read_str_array(buf: mmap.mmap, pos: int, count: int, keep: bool):
    # The hot loop of the whole reader (vocabularies and merge tables): locals on purpose.
    unpack_len = struct.Struct("<Q").unpack_from
    size = len(buf)
    if not keep:
        for _ in range(count):
            pos += 8 + unpack_len(buf, pos)[0]
        if pos > size:
            raise struct.error("string array runs past the end of the file")
        return count, pos
    out = []
    append = out.append
    for _ in range(count):
        end = pos + 8 + unpack_len(buf, pos)[0]
        append(buf[pos + 8:end].decode("utf-8"))
        pos = end
    if pos > size:
        raise struct.error("string array runs past the end of the file")
    return out, pos
