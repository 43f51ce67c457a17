"""SamplingMetadata: the per-row sampling settings of one step, as device tensors.

Built once per step from the runner's states of the sequences that sample (in row order)
and handed to the Sampler with the logits. Everything is decided here, on the host, from
plain Python values: which optional stages the batch needs (`needs_*` flags), padded token
histories for the penalties, sparse (row, token) lists for logit_bias and min_tokens. The
Sampler then never has to ask the device a question (no host sync).

Imports: numpy, torch, sampling_params and runner.request_state only (never text/ or
frontend/).
"""
from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch

from cormorant.engine.types import MaskBits
from cormorant.runner.request_state import RequestState
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
    # Constrained decoding: the rows under a grammar and their allowed tokens, as the engine's
    # packed bitmask (bit t of a row: token t allowed). None: no constrained row.
    mask_rows: torch.Tensor | None = None  # [R] int64
    mask_words: torch.Tensor | None = None  # [R, W] int32: the packed bits, on the device

    @property
    def num_masked_rows(self) -> int:
        return 0 if self.mask_rows is None else self.mask_rows.shape[0]

    @property
    def is_plain_greedy(self) -> bool:
        """Every row is a bare argmax: no penalty, bias, ban or logprobs to honour."""
        return (self.all_greedy and self.penalties is None and self.bias_rows is None
                and self.ban_rows is None and self.max_num_logprobs is None)

    @classmethod
    def build(cls, seqs: list[RequestState], device: torch.device | str,
              eos_token_ids: Iterable[int] = (),
              grammar: tuple[list[int], MaskBits] | None = None) -> SamplingMetadata:
        """`seqs` are the sequences sampling this step, in the row order of the logits;
        `grammar`: (rows, packed int32 bitmasks) of the constrained rows, if any."""
        device = torch.device(device)
        mask = _grammar_mask(grammar, device) if grammar and grammar[0] else (None, None)
        params = [seq.sampling_params for seq in seqs]
        random = [p for p in params if not p.is_greedy]
        num_logprobs = [p.logprobs for p in params]
        asked = [k for k in num_logprobs if k is not None]
        rows = _per_row_tensors(params, device)
        bias = _sparse(_logit_bias_entries(params), device)
        ban = _sparse(_min_tokens_entries(seqs, frozenset(eos_token_ids)), device)
        has_penalties = any(p.has_penalties for p in params)
        return cls(
            num_rows=len(seqs),
            seq_ids=[seq.seq_id for seq in seqs],
            seeded_rows=[(row, seq.seq_id, stream_seed(p.seed, seq.index))
                         for row, (seq, p) in enumerate(zip(seqs, params))
                         if p.seed is not None and not p.is_greedy],
            num_logprobs=num_logprobs,
            max_num_logprobs=max(asked) if asked else None,
            all_greedy=not random,
            needs_top_k=any(p.top_k > 0 for p in random),
            needs_top_p=any(p.top_p < 1.0 for p in random),
            needs_min_p=any(p.min_p > 0.0 for p in random),
            temperature=rows[_TEMPERATURE],
            is_greedy=rows[_IS_GREEDY] > 0.5,
            top_k=rows[_TOP_K].long(),
            top_p=rows[_TOP_P],
            min_p=rows[_MIN_P],
            penalties=_penalty_tensors(seqs, rows, device) if has_penalties else None,
            bias_rows=bias[0] if bias is not None else None,
            bias_tokens=bias[1] if bias is not None else None,
            bias_values=bias[2] if bias is not None else None,
            ban_rows=ban[0] if ban is not None else None,
            ban_tokens=ban[1] if ban is not None else None,
            mask_rows=mask[0],
            mask_words=mask[1],
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


def _grammar_mask(grammar: tuple[list[int], MaskBits], device: torch.device
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows [R] int64, words [R, W] int32) on the device from the engine's packed rows: the
    bits travel (V / 8 bytes a row); the sampler applies them."""
    rows, bits = grammar
    words = np.frombuffer(bits, dtype="<i4").reshape(len(rows), -1)  # [R, W], read-only
    if device.type == "cuda":
        if _pinned(bits):  # the copy starts from the bits themselves
            host = torch.from_numpy(words)
        else:  # one copy, straight into pinned memory (~5 MB at 256 rows)
            host = torch.empty(words.shape, dtype=torch.int32, pin_memory=True)
            host.numpy()[:] = words
        words = host.to(device, non_blocking=True)
    else:
        words = torch.from_numpy(words.copy())
    row_ids = _to_device(torch.tensor(rows, dtype=torch.int64), device)  # [R]
    return row_ids, words


def _pinned(bits: MaskBits) -> bool:
    """Whether the bits already lie in pinned memory (the grammar process's replies land
    there on a GPU: frontend.builder), so the device copy can start from them."""
    if not isinstance(bits, memoryview) or bits.readonly or not bits.nbytes:
        return False
    return torch.frombuffer(bits, dtype=torch.uint8).is_pinned()


def _to_device(cpu_tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    # Pinned memory makes the copy truly asynchronous on CUDA, so building the metadata does
    # not wait for the forward pass already queued on the stream.
    if device.type == "cuda":
        return cpu_tensor.pin_memory().to(device, non_blocking=True)
    return cpu_tensor.to(device)


# Rows of the packed per-row table: one host->device copy carries every scalar setting.
_TEMPERATURE, _TOP_P, _MIN_P, _TOP_K, _IS_GREEDY, _REPETITION, _PRESENCE, _FREQUENCY = range(8)
_TOP_K_CAP = 1 << 24  # float32 holds every integer up to here exactly; no vocab is larger


def _per_row_tensors(params: list[SamplingParams], device: torch.device) -> torch.Tensor:
    table = np.array([
        [1.0 if p.is_greedy else p.temperature for p in params],  # greedy: never divide by 0
        [p.top_p for p in params],
        [p.min_p for p in params],
        [min(p.top_k, _TOP_K_CAP) for p in params],
        [float(p.is_greedy) for p in params],
        [p.repetition_penalty for p in params],
        [p.presence_penalty for p in params],
        [p.frequency_penalty for p in params],
    ], dtype=np.float32).reshape(8, len(params))
    return _to_device(torch.from_numpy(table), device)  # [8, N] float32


def _sparse(entries: tuple[list, ...], device: torch.device) -> list[torch.Tensor] | None:
    """(rows, tokens[, values]) lists -> device tensors in one copy; None when empty."""
    if not entries[0]:
        return None
    table = _to_device(torch.tensor(entries, dtype=torch.float64), device)  # [2 or 3, B]
    # float64 holds token ids and row indices exactly; values become float32 like the logits.
    return [table[0].long(), table[1].long(), *(t.float() for t in table[2:])]


def _logit_bias_entries(params: list[SamplingParams]) -> tuple[list, list, list]:
    rows, tokens, values = [], [], []
    for row, p in enumerate(params):
        for token_id, value in (p.logit_bias or {}).items():
            rows.append(row)
            tokens.append(int(token_id))  # JSON keys arrive as strings
            values.append(float(value))
    return rows, tokens, values


def _min_tokens_entries(seqs: list[RequestState], eos: frozenset[int]
                        ) -> tuple[list, list]:
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


def _penalty_tensors(seqs: list[RequestState], rows: torch.Tensor,
                     device: torch.device) -> PenaltyTensors:
    params = [seq.sampling_params for seq in seqs]
    empty: list[int] = []
    # Only rows that use a history pay for it; the others pad to -1 and are left untouched.
    # Cost note: this re-reads every penalised history each step (O(tokens) host work, about
    # 25 ns a token); a persistent per-sequence count tensor would make it O(1) if needed.
    prompt = [seq.prompt_token_ids if p.repetition_penalty != 1.0 else empty
              for seq, p in zip(seqs, params)]
    output = [seq.output_token_ids if p.has_penalties else empty
              for seq, p in zip(seqs, params)]
    return PenaltyTensors(
        repetition=rows[_REPETITION],
        presence=rows[_PRESENCE],
        frequency=rows[_FREQUENCY],
        prompt_ids=_to_device(_pad(prompt), device),
        output_ids=_to_device(_pad(output), device),
    )


def _pad(histories: list[list[int]]) -> torch.Tensor:
    """Ragged token lists -> [N, max_len] int64 padded with -1 (at least one column).
    numpy rather than torch.tensor per row: ~10x faster on long prompts."""
    lengths = np.fromiter(map(len, histories), dtype=np.int64, count=len(histories))  # [N]
    width = max(int(lengths.max(initial=0)), 1)
    flat = np.fromiter(itertools.chain.from_iterable(histories), dtype=np.int64,
                       count=int(lengths.sum()))
    padded = np.full((len(histories), width), -1, dtype=np.int64)  # [N, width]
    # Row-major boolean assignment fills each row's prefix in order: exactly the flat list.
    padded[np.arange(width) < lengths[:, None]] = flat
    return torch.from_numpy(padded)
