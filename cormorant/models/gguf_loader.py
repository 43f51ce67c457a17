"""GGUF files (llama.cpp): metadata -> ModelConfig, and a stream of dequantized tensors.

Reads with gguf.GGUFReader (memory-mapped) and dequantizes one tensor at a time with
gguf.quants.dequantize, so peak memory is about one float32 tensor above the model itself.
Tensor names are mapped to Hugging Face names so models.weights loads both formats the same
way. llama.cpp's converter permutes the rows of attn_q / attn_k of llama-architecture models
(interleaved rotary pairs); that is undone here. Qwen2/Qwen3 GGUFs are not permuted.
With keep_blocks, quantized weights of linear layers are yielded as layers.gguf_blocks
BlockTensors (raw blocks, no dequantization) for the layers' quantized methods, and
`linear_types` says which GGUF types each linear layer's parts have, so a method can be
chosen per layer before the weights are read.
The tokenizer in the GGUF is not read here (cormorant.text owns it).
Imports: gguf, numpy, torch, config, cormorant.layers.gguf_blocks.
"""
from __future__ import annotations

import mmap
import re
import struct
from collections.abc import Iterator

import numpy as np
import torch
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType
from gguf.quants import dequantize

from cormorant.config import ModelConfig
from cormorant.layers.gguf_blocks import BlockTensor

_ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM",
                  "qwen3": "Qwen3ForCausalLM"}
_PERMUTED_ARCHITECTURES = {"llama"}  # q/k rows interleaved by convert_hf_to_gguf.py

_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_BLOCK_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_BLOCK_RE = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)")
_ROPE_FREQS = "rope_freqs.weight"  # Llama 3.1 rope scaling, as per-frequency divisors


class GGUFFormatError(ValueError):
    """A malformed GGUF: the message names the file and the header field at fault."""


def open_gguf(path: str) -> GGUFReader:
    """The gguf package's reader, after every header field was checked against the file size
    (the reader itself trusts them: absurd counts or offsets raise raw numpy errors)."""
    check_gguf_layout(path)
    try:
        return GGUFReader(path, "r")
    except (ValueError, IndexError, KeyError, OverflowError, MemoryError) as exc:
        raise GGUFFormatError(f"{path}: not a readable GGUF file ({exc})") from None


_MAX_DIMS = 4  # GGML_MAX_DIMS
_SCALAR_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_STRING, _ARRAY = 8, 9


class _Cursor:
    """Little-endian reads over the file's bytes; a read past the end names the field."""

    def __init__(self, path: str, data: mmap.mmap) -> None:
        self.path, self.data, self.pos = path, data, 0

    def fail(self, field: str, why: str) -> GGUFFormatError:
        return GGUFFormatError(f"{self.path}: GGUF header field {field}: {why} (file is "
                               f"{len(self.data)} bytes)")

    def take(self, fmt: str, field: str):
        size = struct.calcsize("<" + fmt)
        if self.pos + size > len(self.data):
            raise self.fail(field, f"truncated at byte {self.pos}")
        values = struct.unpack_from("<" + fmt, self.data, self.pos)
        self.pos += size
        return values[0] if len(values) == 1 else values

    def count(self, field: str, min_item_bytes: int) -> int:
        n = self.take("Q", field)
        if n * min_item_bytes > len(self.data) - self.pos:
            raise self.fail(field, f"{n} entries cannot fit in the rest of the file")
        return n

    def string(self, field: str) -> bytes:
        n = self.count(field, 1)
        self.pos += n
        return bytes(self.data[self.pos - n:self.pos])

    def skip_value(self, value_type: int, field: str) -> None:
        if value_type in _SCALAR_SIZES:
            self.take(f"{_SCALAR_SIZES[value_type]}s", field)
        elif value_type == _STRING:
            self.string(field)
        elif value_type == _ARRAY:
            elem_type = self.take("I", field)
            n = self.count(field, _SCALAR_SIZES.get(elem_type, 8))
            if elem_type in _SCALAR_SIZES:
                self.pos += n * _SCALAR_SIZES[elem_type]  # count() checked it fits
            elif elem_type == _STRING:  # vocabularies: the hot loop, kept tight
                unpack, data, pos = struct.Struct("<Q").unpack_from, self.data, self.pos
                for _ in range(n):
                    if pos + 8 > len(data):
                        break
                    pos += 8 + unpack(data, pos)[0]
                if pos > len(data):
                    raise self.fail(field, "string array runs past the end of the file")
                self.pos = pos
            else:
                for _ in range(n):
                    self.skip_value(elem_type, field)
        else:
            raise self.fail(field, f"unknown value type {value_type}")


def check_gguf_layout(path: str) -> None:
    """Every count, dimension and offset of the header against the file size, before the
    gguf package trusts them; a clear GGUFFormatError naming the file and field otherwise."""
    with open(path, "rb") as f:
        try:
            blob = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError:
            raise GGUFFormatError(f"{path}: empty file, not a GGUF") from None
    try:
        _check(_Cursor(path, blob))
    finally:
        blob.close()


def _check(cur: _Cursor) -> None:
    data = cur.data
    if cur.take("4s", "magic") != b"GGUF":
        raise cur.fail("magic", "not a GGUF file")
    version = cur.take("I", "version")
    if version not in (2, 3):
        raise cur.fail("version", f"{version} is not supported (need v2 or v3)")
    num_tensors = cur.take("Q", "tensor_count")
    num_kv = cur.count("metadata_kv_count", 13)  # key length + type + one byte at least
    if num_tensors * 24 > len(data):  # name length + n_dims + type + offset
        raise cur.fail("tensor_count", f"{num_tensors} tensors cannot fit in the file")
    alignment = 32
    for i in range(num_kv):
        key = cur.string(f"metadata[{i}].key").decode("utf-8", "replace")
        value_type = cur.take("I", f"metadata {key!r} type")
        if key == "general.alignment" and value_type == 4:
            alignment = cur.take("I", "general.alignment")
            if alignment == 0 or alignment & (alignment - 1):
                raise cur.fail("general.alignment", f"{alignment} is not a power of two")
        else:
            cur.skip_value(value_type, f"metadata {key!r}")
    tensors = [_tensor_info(cur, i) for i in range(num_tensors)]
    data_start = -(-cur.pos // alignment) * alignment
    for name, nbytes, offset in tensors:
        if data_start + offset + nbytes > len(data):
            raise cur.fail(f"tensor {name!r} offset", f"data at {data_start + offset}..."
                           f"{data_start + offset + nbytes} runs past the end of the file")


def _tensor_info(cur: _Cursor, i: int) -> tuple[str, int, int]:
    from gguf.constants import GGML_QUANT_SIZES

    name = cur.string(f"tensor[{i}].name").decode("utf-8", "replace")
    n_dims = cur.take("I", f"tensor {name!r} n_dims")
    if not 1 <= n_dims <= _MAX_DIMS:
        raise cur.fail(f"tensor {name!r} n_dims", f"{n_dims} (must be 1..{_MAX_DIMS})")
    dims = [cur.take("Q", f"tensor {name!r} dims[{d}]") for d in range(n_dims)]
    type_id = cur.take("I", f"tensor {name!r} type")
    offset = cur.take("Q", f"tensor {name!r} offset")
    try:
        block, block_bytes = GGML_QUANT_SIZES[GGMLQuantizationType(type_id)]
    except (ValueError, KeyError):
        raise cur.fail(f"tensor {name!r} type", f"unknown tensor type {type_id}") from None
    num_elements = 1
    for d, n in enumerate(dims):
        num_elements *= n
        if n == 0 or num_elements * block_bytes // block > len(cur.data):
            raise cur.fail(f"tensor {name!r} dims[{d}]", f"{n} makes the tensor {dims} "
                           "larger than the file")
    if dims[0] % block:
        raise cur.fail(f"tensor {name!r} dims[0]", f"{dims[0]} is not a multiple of the "
                       f"type's block size {block}")
    return name, num_elements // block * block_bytes, offset


def gguf_model_config(reader: GGUFReader) -> ModelConfig:
    """Architecture facts from the GGUF metadata (and the shapes of a few tensors)."""
    meta = _Metadata(reader)
    arch = meta.get("general.architecture")
    if arch not in _ARCHITECTURES:
        raise ValueError(f"unsupported GGUF architecture {arch!r}; supported: "
                         f"{', '.join(sorted(_ARCHITECTURES))}")
    tensors = {t.name: t for t in reader.tensors}
    hidden = meta.get(f"{arch}.embedding_length")
    num_heads = meta.get(f"{arch}.attention.head_count")
    head_dim = meta.get(f"{arch}.attention.key_length", hidden // num_heads)
    rotary_dim = meta.get(f"{arch}.rope.dimension_count", head_dim)
    if rotary_dim != head_dim:
        raise ValueError(f"partial rotary embeddings ({rotary_dim} of {head_dim}) "
                         "are not supported")
    eos_ids = [meta.get(f"tokenizer.ggml.{kind}_token_id", None) for kind in ("eos", "eot", "eom")]
    return ModelConfig(
        architecture=_ARCHITECTURES[arch],
        # The embedding's row count is the truth; the metadata vocab_size is optional.
        vocab_size=int(tensors["token_embd.weight"].shape[1]),
        hidden_size=hidden,
        intermediate_size=meta.get(f"{arch}.feed_forward_length"),
        num_layers=meta.get(f"{arch}.block_count"),
        num_heads=num_heads,
        num_kv_heads=meta.get(f"{arch}.attention.head_count_kv", num_heads),
        head_dim=head_dim,
        max_position_embeddings=meta.get(f"{arch}.context_length"),
        rms_norm_eps=meta.get(f"{arch}.attention.layer_norm_rms_epsilon", 1e-6),
        rope_theta=meta.get(f"{arch}.rope.freq_base", 10000.0),
        rope_scaling=_rope_scaling(meta, arch, tensors.get(_ROPE_FREQS)),
        tie_word_embeddings="output.weight" not in tensors,
        attention_bias="blk.0.attn_q.bias" in tensors,
        qk_norm="blk.0.attn_q_norm.weight" in tensors,
        bos_token_id=meta.get("tokenizer.ggml.bos_token_id", None),
        eos_token_ids=tuple(dict.fromkeys(i for i in eos_ids if i is not None)),
    )


class _Metadata:
    """Typed access to the key/value fields; a missing required key is a clear error."""

    _MISSING = object()

    def __init__(self, reader: GGUFReader) -> None:
        self.fields = reader.fields

    def get(self, key: str, default: object = _MISSING) -> object:
        field = self.fields.get(key)
        if field is None:
            if default is self._MISSING:
                raise ValueError(f"GGUF metadata lacks {key!r}")
            return default
        if field.types[0] == GGUFValueType.STRING:
            return bytes(field.parts[field.data[0]]).decode("utf-8")
        if field.types[0] == GGUFValueType.ARRAY:
            raise ValueError(f"GGUF metadata {key!r} is an array, expected a scalar")
        value = field.parts[field.data[0]][0]
        return value.item() if isinstance(value, np.generic) else value


def _rope_scaling(meta: _Metadata, arch: str, rope_freqs) -> tuple | None:
    if rope_freqs is not None:
        factors = tuple(float(f) for f in dequantize_tensor(rope_freqs).flatten().tolist())
        return (("factors", factors), ("rope_type", "freq_factors"))
    kind = meta.get(f"{arch}.rope.scaling.type", "none")
    factor = meta.get(f"{arch}.rope.scaling.factor", 1.0)
    if kind == "none" or (kind == "linear" and factor == 1.0):
        return None
    if kind == "linear":
        return (("factor", float(factor)), ("rope_type", "linear"))
    raise ValueError(f"unsupported GGUF rope scaling type {kind!r}")


def dequantize_tensor(tensor) -> torch.Tensor:
    """A GGUF tensor as float32 torch, in PyTorch's [rows, cols] order (GGUF lists shapes
    innermost first)."""
    shape = tuple(int(n) for n in reversed(tensor.shape))
    if tensor.tensor_type == GGMLQuantizationType.F32:
        array = np.array(tensor.data, dtype=np.float32)  # copy out of the memory map
    else:
        array = dequantize(tensor.data, tensor.tensor_type)
    return torch.from_numpy(array).reshape(shape)


def unpermute_rows(weight: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Inverse of llama.cpp's q/k permutation: per head, its rows were reordered from
    [pairs of (first half, second half)] to the interleaved rotary layout."""
    rest = weight.shape[1:]
    half = weight.shape[0] // num_heads // 2
    return (weight.reshape(num_heads, half, 2, *rest)
            .transpose(1, 2).reshape(weight.shape))


def hf_name(gguf_name: str) -> str:
    """Map a GGUF tensor name to the Hugging Face name; unknown names pass through
    (prefixed) so the loader's unexpected-tensor error names them."""
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    match = _BLOCK_RE.fullmatch(gguf_name)
    if match and match.group(2) in _BLOCK_NAMES:
        layer, part, kind = match.groups()
        return f"model.layers.{layer}.{_BLOCK_NAMES[part]}.{kind}"
    return f"gguf:{gguf_name}"


_DENSE_TYPES = (GGMLQuantizationType.F32, GGMLQuantizationType.F16, GGMLQuantizationType.BF16)
_LINEAR_RE = re.compile(r"blk\.\d+\.(attn_(q|k|v|output)|ffn_(gate|up|down))\.weight")


def is_linear_weight(gguf_name: str) -> bool:
    return _LINEAR_RE.fullmatch(gguf_name) is not None


def linear_types(reader: GGUFReader) -> dict[str, set[GGMLQuantizationType]]:
    """Hugging Face module name of each linear layer's part (e.g. "model.layers.0.self_attn.
    q_proj") -> the GGUF types of its weight."""
    types: dict[str, set[GGMLQuantizationType]] = {}
    for tensor in reader.tensors:
        if is_linear_weight(tensor.name):
            module = hf_name(tensor.name).rpartition(".")[0]
            types.setdefault(module, set()).add(GGMLQuantizationType(tensor.tensor_type))
    return types


def block_tensor(tensor) -> BlockTensor:
    """A quantized GGUF tensor's raw blocks (copied out of the memory map), [rows, bytes]."""
    shape = tuple(int(n) for n in reversed(tensor.shape))
    raw = np.array(tensor.data, dtype=np.uint8).reshape(shape[0], -1)
    return BlockTensor(GGMLQuantizationType(tensor.tensor_type), torch.from_numpy(raw),
                       shape[-1])


def iter_gguf_tensors(reader: GGUFReader, config: ModelConfig, keep_blocks: bool = False
                      ) -> Iterator[tuple[str, torch.Tensor | BlockTensor]]:
    """Yield (Hugging Face name, float32 tensor), dequantizing one tensor at a time; with
    keep_blocks, the quantized weights of linear layers as BlockTensors instead."""
    is_permuted = _Metadata(reader).get("general.architecture") in _PERMUTED_ARCHITECTURES
    for tensor in reader.tensors:
        if tensor.name == _ROPE_FREQS:  # already folded into config.rope_scaling
            continue
        if (keep_blocks and is_linear_weight(tensor.name)
                and tensor.tensor_type not in _DENSE_TYPES):
            weight = block_tensor(tensor)
            raw = weight.raw
            if is_permuted and ".attn_q." in tensor.name:
                raw = unpermute_rows(raw, config.num_heads)
            elif is_permuted and ".attn_k." in tensor.name:
                raw = unpermute_rows(raw, config.num_kv_heads)
            yield hf_name(tensor.name), BlockTensor(weight.qtype, raw.contiguous(), weight.cols)
            continue
        weight = dequantize_tensor(tensor)
        if is_permuted and ".attn_q." in tensor.name:
            weight = unpermute_rows(weight, config.num_heads)
        elif is_permuted and ".attn_k." in tensor.name:
            weight = unpermute_rows(weight, config.num_kv_heads)
        yield hf_name(tensor.name), weight
