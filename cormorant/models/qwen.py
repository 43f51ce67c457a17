"""Qwen2 / Qwen2.5 and Qwen3: the Llama decoder with Qwen's bias and q/k-norm choices.

Qwen2 has a bias on q, k and v but none on o_proj; Qwen3 has no biases and an RMSNorm over
each q and k head (ModelConfig.qk_norm), and its head_dim need not be hidden / heads.
Imports: cormorant.models.llama.
"""
from __future__ import annotations

from cormorant.models.llama import LlamaForCausalLM


class Qwen2ForCausalLM(LlamaForCausalLM):
    o_proj_bias_follows_attention_bias = False


class Qwen3ForCausalLM(LlamaForCausalLM):
    pass
