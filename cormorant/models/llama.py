"""The Llama-family decoder (Llama 2/3, Mistral, SmolLM2, TinyLlama) and its building blocks.

Qwen2 and Qwen3 (models/qwen.py) reuse these classes: they differ only in the biases and the
per-head q/k norm, which ModelConfig already describes (attention_bias, qk_norm).
Forward contract used by the runner, for a packed batch of T tokens:
    hidden = model(input_ids [T], positions [T], kv_caches, meta)  # [T, hidden]
    logits = model.compute_logits(hidden[rows])                    # [N, vocab] float32
The layers read like Hugging Face's; fusions are the layers' business: the two norms and the
SiLU are deferred into the projection after them (layers.norm, layers.activation,
layers.linear), q/k norm + rotary are handed to the attention backend (forward_prepped).
Imports: torch, config, cormorant.layers.
"""
from __future__ import annotations

import torch
from torch import nn

from cormorant.config import ModelConfig
from cormorant.layers.activation import SiluAndMul
from cormorant.layers.attention import AttentionBackend, AttentionMetadata, QKPrep
from cormorant.layers.embedding import ParallelLMHead, VocabParallelEmbedding
from cormorant.layers.kv_quant import KVScales
from cormorant.layers.linear import (LinearInput, MergedColumnParallelLinear, QKVParallelLinear,
                                     RowParallelLinear)
from cormorant.layers.norm import RMSNorm
from cormorant.layers.rotary import RotaryEmbedding
from cormorant.models.llama_decode1 import LeanDecode


class LlamaAttention(nn.Module):
    def __init__(self, config: ModelConfig, attn_backend: AttentionBackend,
                 rotary_emb: RotaryEmbedding, o_proj_bias: bool) -> None:
        super().__init__()
        self.qkv_proj = QKVParallelLinear(config.hidden_size, config.head_dim, config.num_heads,
                                          config.num_kv_heads, bias=config.attention_bias)
        self.num_heads = self.qkv_proj.num_heads  # this rank's share
        self.num_kv_heads = self.qkv_proj.num_kv_heads
        self.head_dim = config.head_dim
        self.o_proj = RowParallelLinear(config.num_heads * config.head_dim, config.hidden_size,
                                        bias=o_proj_bias)
        self.q_norm = self.k_norm = None
        if config.qk_norm:
            self.q_norm = RMSNorm(config.head_dim, config.rms_norm_eps)
            self.k_norm = RMSNorm(config.head_dim, config.rms_norm_eps)
        self.rotary_emb = rotary_emb  # the model's one instance, shared by every layer
        # Norm (Qwen3) and rotary of q and k, done by the backend (fused where it can).
        self.qk_prep = QKPrep(rotary_emb, self.q_norm, self.k_norm)
        self.attn_backend = attn_backend
        self.scale = config.head_dim ** -0.5
        self.kv_scales = KVScales()  # read only when the KV cache is fp8

    def forward(self, positions: torch.Tensor, hidden_states: LinearInput,
                kv_cache: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        """hidden_states [T, hidden] (or the deferred norm before it) -> [T, hidden]."""
        qkv = self.qkv_proj(hidden_states)  # [T, (H + 2 * Hkv) * D]
        q_size, kv_size = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        q, k, v = qkv.split([q_size, kv_size, kv_size], dim=-1)
        q = q.view(-1, self.num_heads, self.head_dim)  # [T, H, D]
        k = k.view(-1, self.num_kv_heads, self.head_dim)  # [T, Hkv, D]
        v = v.view(-1, self.num_kv_heads, self.head_dim)  # [T, Hkv, D]
        out = self.attn_backend.forward_prepped(q, k, v, kv_cache, meta, self.scale, positions,
                                                self.qk_prep, self.kv_scales)  # [T, H, D]
        return self.o_proj(out.flatten(1))  # [T, hidden]


class LlamaMLP(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        size = config.intermediate_size
        self.gate_up_proj = MergedColumnParallelLinear(config.hidden_size, [size, size])
        self.down_proj = RowParallelLinear(size, config.hidden_size, bias=False)
        self.act_fn = SiluAndMul(deferred=True)  # computed by down_proj (fused where it can)

    def forward(self, x: LinearInput) -> torch.Tensor:
        gate_up = self.gate_up_proj(x)  # [T, 2 * intermediate]
        return self.down_proj(self.act_fn(gate_up))  # [T, hidden]


class LlamaDecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, attn_backend: AttentionBackend,
                 rotary_emb: RotaryEmbedding, o_proj_bias: bool) -> None:
        super().__init__()
        # Both norms are deferred: the projection after each computes it (layers.norm).
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, deferred=True)
        self.self_attn = LlamaAttention(config, attn_backend, rotary_emb, o_proj_bias)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps,
                                                deferred=True)
        self.mlp = LlamaMLP(config)

    def forward(self, positions: torch.Tensor, hidden_states: torch.Tensor,
                residual: torch.Tensor | None, kv_cache: torch.Tensor, meta: AttentionMetadata
                ) -> tuple[torch.Tensor, torch.Tensor]:
        # The residual stream is carried beside the hidden states so each norm adds it in;
        # x.residual is hidden + residual once x's consumer has run.
        x = self.input_layernorm(hidden_states, residual)
        hidden_states = self.self_attn(positions, x, kv_cache, meta)
        x = self.post_attention_layernorm(hidden_states, x.residual)
        hidden_states = self.mlp(x)
        return hidden_states, x.residual


class LlamaModel(nn.Module):
    def __init__(self, config: ModelConfig, attn_backend: AttentionBackend,
                 o_proj_bias: bool) -> None:
        super().__init__()
        self.embed_tokens = VocabParallelEmbedding(config.vocab_size, config.hidden_size)
        self.rotary_emb = RotaryEmbedding(config.head_dim, config.max_position_embeddings,
                                          config.rope_theta, config.rope_scaling_dict)
        self.layers = nn.ModuleList(
            LlamaDecoderLayer(config, attn_backend, self.rotary_emb, o_proj_bias)
            for _ in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.lean_decode = True  # CPU pure-decode steps on int4 weights: models.llama_decode1
        self._lean: tuple[LeanDecode | None, nn.Module] | None = None

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor,
                kv_caches: list[torch.Tensor], meta: AttentionMetadata) -> torch.Tensor:
        hidden = self.embed_tokens(input_ids)  # [T, hidden]
        if (self.lean_decode and meta.max_query_len == 1 and not input_ids.is_cuda
                and input_ids.shape[0] == meta.num_seqs):  # pure decode, one row a sequence
            lean = self._lean_step()
            out = None if lean is None else lean.run(hidden, positions, kv_caches, meta)
            if out is not None:
                return out
        residual = None
        for layer, kv_cache in zip(self.layers, kv_caches, strict=True):
            hidden, residual = layer(positions, hidden, residual, kv_cache, meta)
        hidden, _ = self.norm(hidden, residual)
        return hidden

    def _lean_step(self) -> LeanDecode | None:
        """The lean decode step, built once (again if the layers were swapped since)."""
        if self._lean is None or self._lean[1] is not self.layers[0]:
            self._lean = (LeanDecode.build(self), self.layers[0])
        return self._lean[0]


class LlamaForCausalLM(nn.Module):
    # Checkpoint projection -> (fused parameter, shard id given to its weight_loader).
    packed_modules_mapping = {
        "q_proj": ("qkv_proj", "q"),
        "k_proj": ("qkv_proj", "k"),
        "v_proj": ("qkv_proj", "v"),
        "gate_proj": ("gate_up_proj", 0),
        "up_proj": ("gate_up_proj", 1),
    }
    # Llama puts a bias on o_proj whenever attention_bias is set; Qwen2 never does.
    o_proj_bias_follows_attention_bias = True

    def __init__(self, config: ModelConfig, attn_backend: AttentionBackend) -> None:
        super().__init__()
        self.config = config
        o_proj_bias = config.attention_bias and self.o_proj_bias_follows_attention_bias
        self.model = LlamaModel(config, attn_backend, o_proj_bias)
        self.lm_head = ParallelLMHead(config.vocab_size, config.hidden_size)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor,
                kv_caches: list[torch.Tensor], meta: AttentionMetadata) -> torch.Tensor:
        return self.model(input_ids, positions, kv_caches, meta)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """[N, hidden] -> [N, vocab] float32 (the sampler works in float32)."""
        return self.lm_head(hidden).float()

    def is_ignored_weight(self, name: str) -> bool:
        """Checkpoint tensors that carry nothing this model needs."""
        if "rotary_emb.inv_freq" in name:  # old checkpoints saved the rope buffer
            return True
        return self.config.tie_word_embeddings and name == "lm_head.weight"
