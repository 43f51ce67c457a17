"""The GGUF metadata reader against files written by the `gguf` library."""
from __future__ import annotations

import pytest

from cormorant.text.gguf_metadata import GGUFMetadataError, read_gguf_metadata


@pytest.fixture(scope="module")
def sample_gguf(tmp_path_factory):
    import gguf

    path = tmp_path_factory.mktemp("meta") / "m.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_uint8("t.u8", 200)
    w.add_int8("t.i8", -5)
    w.add_uint16("t.u16", 65535)
    w.add_int32("t.i32", -7)
    w.add_float32("t.f32", 0.25)
    w.add_float64("t.f64", 1.5)
    w.add_uint64("t.u64", 2**40)
    w.add_int64("t.i64", -(2**40))
    w.add_bool("t.b", True)
    w.add_string("t.s", "héllo 🦜")
    w.add_array("t.ai", [1, 2, 3])
    w.add_array("t.af", [0.5, 1.5])
    w.add_array("t.ab", [True, False])
    w.add_array("t.as", ["a", "bé", ""])
    w.add_array("t.big", [f"tok{i}" for i in range(5000)])
    w.add_array("t.nested", [[1, 2], [3]])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_all_value_types(sample_gguf):
    md = read_gguf_metadata(str(sample_gguf))
    assert md["general.architecture"] == "llama"
    expected = {"t.u8": 200, "t.i8": -5, "t.u16": 65535, "t.i32": -7, "t.f32": 0.25,
                "t.f64": 1.5, "t.u64": 2**40, "t.i64": -(2**40), "t.b": True,
                "t.s": "héllo 🦜", "t.ai": [1, 2, 3], "t.af": [0.5, 1.5],
                "t.ab": [True, False], "t.as": ["a", "bé", ""], "t.nested": [[1, 2], [3]]}
    assert {k: md[k] for k in expected} == expected
    assert md["t.big"][4999] == "tok4999"


def test_unrequested_string_arrays_are_counted_not_decoded(sample_gguf):
    md = read_gguf_metadata(str(sample_gguf), string_arrays={"t.as"})
    assert md["t.as"] == ["a", "bé", ""]
    assert md["t.big"] == 5000
    assert md["t.ai"] == [1, 2, 3]  # numeric arrays are always read


def test_matches_gguf_reader_on_sentencepiece_file(spm_gguf):
    import gguf

    ours = read_gguf_metadata(str(spm_gguf))
    reader = gguf.GGUFReader(str(spm_gguf))
    theirs = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    assert ours.keys() == theirs.keys()
    for key, value in theirs.items():
        assert ours[key] == pytest.approx(value) if key.endswith("scores") else ours[key] == value


def test_rejects_non_gguf_and_corrupt_files(tmp_path, sample_gguf):
    data = sample_gguf.read_bytes()
    cases = {
        "empty": b"",
        "magic": b"GGML" + data[4:],
        "version": data[:4] + (1).to_bytes(4, "little") + data[8:],
        "big_endian": data[:4] + (3).to_bytes(4, "big") + data[8:],
        "truncated": data[:len(data) // 2],
    }
    for name, blob in cases.items():
        path = tmp_path / f"{name}.gguf"
        path.write_bytes(blob)
        with pytest.raises(GGUFMetadataError):
            read_gguf_metadata(str(path))
