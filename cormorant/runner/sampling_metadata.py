"""SamplingMetadata: the per-row sampling settings of one step, as device tensors.

Built once per step from the sequences that sample (in row order) and handed to the Sampler
with the logits. Everything is decided here, on the host, from plain Python values: which
optional stages the batch needs (`needs_*` flags), padded token histories for the penalties,
sparse (row, token) lists for logit_bias and min_tokens. The Sampler then never has to ask
the device a question (no host sync).

Imports: torch, sampling_params and engine types only (never text/ or frontend/).
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch.nn.utils.rnn import pad_sequence

from cormorant.engine.sequence import Sequence
from cormorant.sampling_params import SamplingParams

_MASK64 = (1 << 64) - 1


@dataclass(frozen=True)
class PenaltyTensors:
    """Token histories for repetition / presence / frequency penalties.

    Histories are padded with -1; rows without a penalty carry empty (all -1) histories and
    neutral values (1.0 / 0.0), so a batch-wide pass leaves them bit-for-bit unchanged.
    """

    repetition: torch.Tensor  # [N] float32, 1.0 = off
    presence: torch.Tensor  # [N] float32, 0.0 = off
    frequency: torch.Tensor  # [N] float32, 0.0 = off
    prompt_ids: torch.Tensor  # [N, max_prompt] int64, -1 pad; only rows with repetition != 1
    output_ids: torch.Tensor  # [N, max_output] int64, -1 pad; rows with any penalty


@dataclass(frozen=True)
class SamplingMetadata:
    num_rows: int
    seq_ids: list[int]
    # Non-greedy rows with a seed: (row, seq_id, stream seed). The Sampler keeps one
    # torch.Generator per seq_id so the row's draws do not depend on the rest of the batch.
    seeded_rows: list[tuple[int, int, int]]
    num_logprobs: list[int | None]  # per row, as requested (None: no logprobs)
    max_num_logprobs: int | None  # K of the top-k output; None: no row asked for logprobs
    all_greedy: bool
    needs_top_k: bool
    needs_top_p: bool
    needs_min_p: bool
    temperature: torch.Tensor  # [N] float32; greedy rows hold 1.0 (never divide by zero)
    is_greedy: torch.Tensor  # [N] bool
    top_k: torch.Tensor  # [N] int64, 0 = off
    top_p: torch.Tensor  # [N] float32, 1.0 = off
    min_p: torch.Tensor  # [N] float32, 0.0 = off
    penalties: PenaltyTensors | None  # None: no row has a penalty
    # logit_bias as a sparse list: logits[row, token] += value.
    bias_rows: torch.Tensor | None  # [B] int64
    bias_tokens: torch.Tensor | None  # [B] int64
    bias_values: torch.Tensor | None  # [B] float32
    # min_tokens: logits[row, token] = -inf while the row is below its min_tokens.
    ban_rows: torch.Tensor | None  # [M] int64
    ban_tokens: torch.Tensor | None  # [M] int64

    @property
    def is_plain_greedy(self) -> bool:
        """Every row is a bare argmax: no penalty, bias, ban or logprobs to honour."""
        return (self.all_greedy and self.penalties is None and self.bias_rows is None
                and self.ban_rows is None and self.max_num_logprobs is None)

    @classmethod
    def build(cls, seqs: list[Sequence], device: torch.device | str,
              eos_token_ids: Iterable[int] = ()) -> SamplingMetadata:
        """`seqs` are the sequences sampling this step, in the row order of the logits."""
        device = torch.device(device)
        params = [seq.sampling_params for seq in seqs]
        eos = frozenset(eos_token_ids)
        is_greedy = [p.is_greedy for p in params]
        num_logprobs = [p.logprobs for p in params]
        asked = [k for k in num_logprobs if k is not None]
        bias = _logit_bias_entries(params)
        ban = _min_tokens_entries(seqs, eos)
        return cls(
            num_rows=len(seqs),
            seq_ids=[seq.seq_id for seq in seqs],
            seeded_rows=[(row, seq.seq_id, stream_seed(p.seed, seq.index))
                         for row, (seq, p) in enumerate(zip(seqs, params))
                         if p.seed is not None and not p.is_greedy],
            num_logprobs=num_logprobs,
            max_num_logprobs=max(asked) if asked else None,
            all_greedy=all(is_greedy),
            needs_top_k=any(p.top_k > 0 and not p.is_greedy for p in params),
            needs_top_p=any(p.top_p < 1.0 and not p.is_greedy for p in params),
            needs_min_p=any(p.min_p > 0.0 and not p.is_greedy for p in params),
            temperature=_to_device(torch.tensor(
                [1.0 if g else p.temperature for g, p in zip(is_greedy, params)],
                dtype=torch.float32), device),
            is_greedy=_to_device(torch.tensor(is_greedy, dtype=torch.bool), device),
            top_k=_to_device(torch.tensor([p.top_k for p in params], dtype=torch.int64), device),
            top_p=_to_device(torch.tensor([p.top_p for p in params], dtype=torch.float32), device),
            min_p=_to_device(torch.tensor([p.min_p for p in params], dtype=torch.float32), device),
            penalties=_penalty_tensors(seqs, device),
            bias_rows=_maybe(bias[0], torch.int64, device),
            bias_tokens=_maybe(bias[1], torch.int64, device),
            bias_values=_maybe(bias[2], torch.float32, device),
            ban_rows=_maybe(ban[0], torch.int64, device),
            ban_tokens=_maybe(ban[1], torch.int64, device),
        )


def stream_seed(seed: int, index: int) -> int:
    """The generator seed of sample `index` of a request seeded with `seed`.

    Sample 0 uses the seed itself, so n=1 and the first of n>1 share a stream; siblings get a
    splitmix64 mix of (seed, index): different, well-separated and reproducible streams.
    """
    if index == 0:
        return seed & _MASK64
    z = (seed + index * 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def _to_device(cpu_tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    # Pinned memory makes the copy truly asynchronous on CUDA, so building the metadata does
    # not wait for the forward pass already queued on the stream.
    if device.type == "cuda":
        return cpu_tensor.pin_memory().to(device, non_blocking=True)
    return cpu_tensor.to(device)


def _maybe(values: list, dtype: torch.dtype, device: torch.device) -> torch.Tensor | None:
    return _to_device(torch.tensor(values, dtype=dtype), device) if values else None


def _logit_bias_entries(params: list[SamplingParams]) -> tuple[list, list, list]:
    rows, tokens, values = [], [], []
    for row, p in enumerate(params):
        for token_id, value in (p.logit_bias or {}).items():
            rows.append(row)
            tokens.append(int(token_id))  # JSON keys arrive as strings
            values.append(float(value))
    return rows, tokens, values


def _min_tokens_entries(seqs: list[Sequence], eos: frozenset[int]) -> tuple[list, list]:
    """(row, token) pairs to ban: EOS (unless ignore_eos, where it stops nothing) and the
    stop_token_ids, while the sequence has fewer than min_tokens output tokens."""
    rows, tokens = [], []
    for row, seq in enumerate(seqs):
        p = seq.sampling_params
        if seq.num_output_tokens >= p.min_tokens:
            continue
        banned = set(p.stop_token_ids) if p.ignore_eos else eos | set(p.stop_token_ids)
        for token_id in sorted(banned):
            rows.append(row)
            tokens.append(token_id)
    return rows, tokens


def _penalty_tensors(seqs: list[Sequence], device: torch.device) -> PenaltyTensors | None:
    params = [seq.sampling_params for seq in seqs]
    if not any(p.has_penalties for p in params):
        return None
    empty: list[int] = []
    # Only rows that use a history pay for it; the others pad to -1 and are left untouched.
    # Cost note: this re-reads every penalised history each step (O(tokens) host work);
    # a persistent per-sequence count tensor would make it O(1) if it ever shows in profiles.
    prompt = [seq.prompt_token_ids if p.repetition_penalty != 1.0 else empty
              for seq, p in zip(seqs, params)]
    output = [seq.output_token_ids if p.has_penalties else empty
              for seq, p in zip(seqs, params)]
    return PenaltyTensors(
        repetition=_to_device(torch.tensor([p.repetition_penalty for p in params],
                                           dtype=torch.float32), device),
        presence=_to_device(torch.tensor([p.presence_penalty for p in params],
                                         dtype=torch.float32), device),
        frequency=_to_device(torch.tensor([p.frequency_penalty for p in params],
                                          dtype=torch.float32), device),
        prompt_ids=_to_device(_pad(prompt), device),
        output_ids=_to_device(_pad(output), device),
    )


def _pad(histories: list[list[int]]) -> torch.Tensor:
    rows = [torch.tensor(ids, dtype=torch.int64) for ids in histories]
    if max(len(ids) for ids in histories) == 0:
        return torch.full((len(histories), 1), -1, dtype=torch.int64)  # [N, 1]
    return pad_sequence(rows, batch_first=True, padding_value=-1)  # [N, max_len]
