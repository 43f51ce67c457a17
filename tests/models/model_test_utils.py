"""Test helpers for tests/models: paged-attention metadata, KV caches, a tiny paged "runner"
that feeds packed batches through a cormorant model, and weight randomisation for tiny
Hugging Face reference models. The real input preparation lives in cormorant/runner/.
"""
from __future__ import annotations

import torch
from transformers import (LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM,
                          Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM)

from cormorant.config import ModelConfig
from cormorant.layers.attention import AttentionMetadata


def make_attention_metadata(block_tables: list[list[int]], seq_lens: list[int],
                            query_lens: list[int], block_size: int,
                            device: torch.device | str = "cpu") -> AttentionMetadata:
    """Metadata for a packed batch: sequence i computes its last query_lens[i] tokens of a
    seq_lens[i]-token context whose KV lives in the blocks block_tables[i]."""
    slots = []
    for table, seq_len, query_len in zip(block_tables, seq_lens, query_lens):
        for pos in range(seq_len - query_len, seq_len):
            slots.append(table[pos // block_size] * block_size + pos % block_size)
    starts = [0]
    for query_len in query_lens:
        starts.append(starts[-1] + query_len)
    width = max(len(t) for t in block_tables)
    padded = [t + [0] * (width - len(t)) for t in block_tables]
    return AttentionMetadata(
        slot_mapping=torch.tensor(slots, dtype=torch.int64, device=device),
        query_start_loc=torch.tensor(starts, dtype=torch.int32, device=device),
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=device),
        block_tables=torch.tensor(padded, dtype=torch.int32, device=device),
        max_query_len=max(query_lens), max_seq_len=max(seq_lens),
        query_lens_cpu=list(query_lens), seq_lens_cpu=list(seq_lens))


def allocate_kv_caches(config: ModelConfig, num_blocks: int, block_size: int,
                       dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    shape = (2, num_blocks, block_size, config.num_kv_heads, config.head_dim)
    return [torch.zeros(shape, dtype=dtype) for _ in range(config.num_layers)]


class PagedRunner:
    """Drives a model through prefill / decode steps for a fixed set of sequences, each with
    its own scattered (deliberately non-contiguous, reversed) blocks."""

    def __init__(self, model, config: ModelConfig, num_seqs: int, max_len: int,
                 block_size: int = 4, dtype: torch.dtype = torch.float32) -> None:
        self.model, self.block_size = model, block_size
        blocks_per_seq = -(-max_len // block_size)
        num_blocks = num_seqs * blocks_per_seq
        ids = list(reversed(range(num_blocks)))  # neighbours in a sequence are not adjacent
        self.block_tables = [ids[i::num_seqs] for i in range(num_seqs)]
        self.kv_caches = allocate_kv_caches(config, num_blocks, block_size, dtype)
        self.context_lens = [0] * num_seqs

    @torch.no_grad()
    def step(self, new_tokens: dict[int, list[int]]) -> dict[int, torch.Tensor]:
        """Compute new_tokens[seq] for the given sequences in one packed batch; returns each
        sequence's float32 logits for its new positions, [len(new_tokens[seq]), vocab]."""
        seqs = list(new_tokens)
        input_ids, positions, seq_lens, query_lens = [], [], [], []
        for seq in seqs:
            start, tokens = self.context_lens[seq], new_tokens[seq]
            input_ids += tokens
            positions += range(start, start + len(tokens))
            query_lens.append(len(tokens))
            seq_lens.append(start + len(tokens))
        meta = make_attention_metadata([self.block_tables[s] for s in seqs], seq_lens,
                                       query_lens, self.block_size)
        hidden = self.model(torch.tensor(input_ids), torch.tensor(positions),
                            self.kv_caches, meta)  # [T, hidden]
        logits = self.model.compute_logits(hidden)  # [T, vocab]
        for seq, seq_len in zip(seqs, seq_lens):
            self.context_lens[seq] = seq_len
        return dict(zip(seqs, logits.split(query_lens)))


@torch.no_grad()
def randomize_(model: torch.nn.Module, seed: int = 0, std: float = 0.1) -> None:
    """Give every parameter (norm weights and biases included, which transformers
    initialises to constants) distinct random values, so loading mistakes show up."""
    gen = torch.Generator().manual_seed(seed)
    for name, param in model.named_parameters():
        noise = torch.randn(param.shape, generator=gen)
        param.copy_(1.0 + 0.2 * noise if "norm" in name else std * noise)


# Tiny reference models: name -> (config class, model class, config overrides).
_COMMON = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, vocab_size=128, max_position_embeddings=256,
               attn_implementation="eager")
LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 32,
               "rope_theta": 500000.0}

CASES = {
    "llama-tied": (LlamaConfig, LlamaForCausalLM, dict(tie_word_embeddings=True)),
    "llama3-rope-untied": (LlamaConfig, LlamaForCausalLM,
                           dict(tie_word_embeddings=False, rope_parameters=LLAMA3_ROPE)),
    "llama-linear-rope": (LlamaConfig, LlamaForCausalLM,
                          dict(rope_parameters={"rope_type": "linear", "factor": 2.0,
                                                "rope_theta": 10000.0})),
    "mistral": (MistralConfig, MistralForCausalLM, dict(tie_word_embeddings=False)),
    "qwen2-bias": (Qwen2Config, Qwen2ForCausalLM, dict(tie_word_embeddings=False)),
    "qwen3-qknorm": (Qwen3Config, Qwen3ForCausalLM, dict(tie_word_embeddings=True, head_dim=32)),
}


def make_hf_model(case: str, seed: int = 0):
    """A tiny transformers model of CASES[case] with every parameter randomised."""
    config_cls, model_cls, extra = CASES[case]
    torch.manual_seed(seed)
    hf_model = model_cls(config_cls(**_COMMON, **extra)).eval()
    randomize_(hf_model, seed)
    return hf_model


def make_checkpoint(directory, case: str, seed: int = 0, **save_kwargs):
    """Save make_hf_model(case) as safetensors into `directory`; returns the model."""
    hf_model = make_hf_model(case, seed)
    hf_model.save_pretrained(directory, safe_serialization=True, **save_kwargs)
    return hf_model


@torch.no_grad()
def reference_logits(hf_model, tokens: list[int]) -> torch.Tensor:
    return hf_model(torch.tensor([tokens])).logits[0].float()  # [len, vocab]
