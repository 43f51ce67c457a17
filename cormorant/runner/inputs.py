"""Turn a ScheduledBatch (ids and ints) into the packed tensors of one forward pass.

Imports torch, the engine's plain types and layers.attention's metadata type.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from cormorant.engine.sequence import Sequence
from cormorant.engine.types import ScheduledBatch
from cormorant.layers.attention import AttentionMetadata


@dataclass
class PromptLogprobRows:
    """Rows of this step whose logits score the next prompt token (prompt_logprobs requests)."""

    batch_index: int  # which sequence of the batch
    rows: list[int]  # hidden-state rows, in position order
    target_ids: list[int]  # the prompt token each row predicts
    num_top: int  # how many alternatives per position


@dataclass
class ModelInputs:
    input_ids: torch.Tensor  # [num_tokens] int64
    positions: torch.Tensor  # [num_tokens] int64
    attn: AttentionMetadata
    sample_rows: torch.Tensor  # [num_sampling] int64: the last row of each sampling sequence
    sampling_seqs: list[Sequence]  # in sample_rows order
    prompt_logprob_rows: list[PromptLogprobRows]


def prepare_inputs(batch: ScheduledBatch, block_size: int, device: torch.device) -> ModelInputs:
    input_ids: list[int] = []
    positions: list[int] = []
    slots: list[int] = []
    query_lens: list[int] = []
    seq_lens: list[int] = []
    sample_rows: list[int] = []
    sampling_seqs: list[Sequence] = []
    prompt_rows: list[PromptLogprobRows] = []
    for i, (seq, num_new, do_sample) in enumerate(
            zip(batch.seqs, batch.num_new_tokens, batch.do_sample)):
        start = seq.num_computed_tokens
        end = start + num_new
        first_row = len(input_ids)
        input_ids.extend(seq.token_ids[start:end])
        positions.extend(range(start, end))
        table = seq.block_table
        slots.extend(table[p // block_size] * block_size + p % block_size for p in range(start, end))
        query_lens.append(num_new)
        seq_lens.append(end)
        if do_sample:
            sample_rows.append(len(input_ids) - 1)
            sampling_seqs.append(seq)
        if seq.sampling_params.prompt_logprobs is not None and start < seq.num_prompt_tokens - 1:
            last = min(end, seq.num_prompt_tokens - 1)  # the last prompt token predicts nothing
            prompt_rows.append(PromptLogprobRows(
                i, [first_row + p - start for p in range(start, last)],
                seq.prompt_token_ids[start + 1:last + 1], seq.sampling_params.prompt_logprobs))

    max_blocks = max(len(seq.block_table) for seq in batch.seqs)
    tables = [seq.block_table + [0] * (max_blocks - len(seq.block_table)) for seq in batch.seqs]
    query_start = [0]
    for n in query_lens:
        query_start.append(query_start[-1] + n)

    def tensor(values, dtype):
        return torch.tensor(values, dtype=dtype, pin_memory=device.type == "cuda").to(
            device, non_blocking=True)

    attn = AttentionMetadata(
        slot_mapping=tensor(slots, torch.int64),
        query_start_loc=tensor(query_start, torch.int32),
        seq_lens=tensor(seq_lens, torch.int32),
        block_tables=tensor(tables, torch.int32),
        max_query_len=max(query_lens),
        max_seq_len=max(seq_lens),
        query_lens_cpu=query_lens,
        seq_lens_cpu=seq_lens,
    )
    return ModelInputs(
        input_ids=tensor(input_ids, torch.int64),
        positions=tensor(positions, torch.int64),
        attn=attn,
        sample_rows=tensor(sample_rows, torch.int64),
        sampling_seqs=sampling_seqs,
        prompt_logprob_rows=prompt_rows,
    )
