"""GGUF files (llama.cpp): metadata -> ModelConfig, and a stream of dequantized tensors.

Reads with gguf.GGUFReader (memory-mapped) and dequantizes one tensor at a time with
gguf.quants.dequantize, so peak memory is about one float32 tensor above the model itself.
Tensor names are mapped to Hugging Face names so models.weights loads both formats the same
way. llama.cpp's converter permutes the rows of attn_q / attn_k of llama-architecture models
(interleaved rotary pairs); that is undone here. Qwen2/Qwen3 GGUFs are not permuted.
The tokenizer in the GGUF is not read here (cormorant.text owns it).
Imports: gguf, numpy, torch, config.
"""
from __future__ import annotations

import re
from collections.abc import Iterator

import numpy as np
import torch
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType
from gguf.quants import dequantize

from cormorant.config import ModelConfig

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


def open_gguf(path: str) -> GGUFReader:
    return GGUFReader(path, "r")


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


def iter_gguf_tensors(reader: GGUFReader, config: ModelConfig
                      ) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (Hugging Face name, float32 tensor), dequantizing one tensor at a time."""
    is_permuted = _Metadata(reader).get("general.architecture") in _PERMUTED_ARCHITECTURES
    for tensor in reader.tensors:
        if tensor.name == _ROPE_FREQS:  # already folded into config.rope_scaling
            continue
        weight = dequantize_tensor(tensor)
        if is_permuted and ".attn_q." in tensor.name:
            weight = unpermute_rows(weight, config.num_heads)
        elif is_permuted and ".attn_k." in tensor.name:
            weight = unpermute_rows(weight, config.num_kv_heads)
        yield hf_name(tensor.name), weight
