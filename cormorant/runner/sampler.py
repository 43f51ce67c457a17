"""Sampler: turns one step's logits into token ids (+ raw logprobs), per-row settings batched.

Pipeline for the rows of one step (each stage is skipped when no row of the batch needs it;
the decision is made on the host from SamplingMetadata's flags, never by reading the device):

    grammar mask  <- -inf outside each constrained row's allowed tokens (engine.structured)
    raw logprobs  <- log_softmax(logits)            (before any processing: what OpenAI returns;
                                                     of the masked distribution, as vLLM's;
                                                     chosen token only: logit - logsumexp)
    logit_bias -> repetition / frequency / presence penalties -> min_tokens ban
    greedy rows   <- argmax
    other rows    <- temperature -> min_p -> top_k -> top_p -> exponential race

Random rows are drawn with the exponential race, argmax(probs / E) with E ~ Exp(1) per token,
which is an exact sample from probs and needs no cumulative sums or host syncs. Each seeded
sequence owns a torch.Generator (keyed by seq_id, advanced once per sampled token by one [V]
draw), so its tokens depend only on its own logits and seed: not on the batch, its row or
preemption (a recomputed sequence keeps its tokens and simply continues the same stream).
Unseeded rows share one generator, seeded with the engine's seed (EngineConfig.seed, the
`--seed` flag). Call `release(seq_id)` when a sequence finishes.

Host syncs: none in `__call__`. No .item()/.tolist()/boolean indexing; every shape is known on
the host. The only host->device copies happen in SamplingMetadata.build (pinned, non-blocking).

Imports: torch, sampling_params, engine types, runner.sampling_metadata (never text/ or
frontend/).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from cormorant.runner.sampling_metadata import PenaltyTensors, SamplingMetadata

# SamplingMetadata is re-exported: the runner imports both halves of the seam from here.
__all__ = ["Sampler", "SamplerOutput", "SamplingMetadata", "apply_bias_penalties_bans",
           "apply_grammar_mask",
           "apply_min_p", "apply_penalties", "apply_top_k_top_p"]

# Keeps 0/0 out of the race: a token with zero probability can never win, even if its noise
# underflowed to 0. 1/tiny is ~8.5e37, still finite in float32.
_TINY = torch.finfo(torch.float32).tiny


@dataclass
class SamplerOutput:
    token_ids: torch.Tensor  # [N] int64
    logprobs: torch.Tensor | None = None  # [N] float32, raw logprob of the chosen token
    topk_ids: torch.Tensor | None = None  # [N, K] int64, K = max requested, best first
    topk_values: torch.Tensor | None = None  # [N, K] float32, sorted descending


class Sampler:
    """Stateful only in its generators: one shared for unseeded rows, one per seeded seq_id."""

    def __init__(self, seed: int = 0) -> None:
        """seed: the shared generator's, for rows whose request brings no seed."""
        self._seed = seed
        self._shared: torch.Generator | None = None
        self._generators: dict[int, torch.Generator] = {}

    @property
    def num_generators(self) -> int:
        return len(self._generators)

    def release(self, seq_id: int) -> None:
        """Forget a finished or aborted sequence's generator (idempotent). Do NOT call on
        preemption: the sequence keeps its tokens and must continue the same stream."""
        self._generators.pop(seq_id, None)

    def __call__(self, logits: torch.Tensor, meta: SamplingMetadata) -> SamplerOutput:
        # logits: [N, V] float32, row i belongs to meta.seq_ids[i]. Not modified in place,
        # except by the grammar mask on CUDA (apply_grammar_mask).
        assert logits.dim() == 2 and logits.shape[0] == meta.num_rows
        if meta.mask_rows is not None:
            logits = apply_grammar_mask(logits.float(), meta.mask_rows, meta.mask_words)
        if meta.is_plain_greedy:
            return SamplerOutput(token_ids=logits.argmax(dim=-1))
        logits = logits.float()
        raw = logits  # [N, V]: stages below are out of place, so these stay the raw logits
        # Top-k alternatives need the whole log_softmax; the chosen token's logprob alone
        # (logprobs=0 on every row that asks) needs only a logsumexp: no [N, V] write.
        raw_logprobs = (torch.log_softmax(logits, dim=-1)
                        if meta.max_num_logprobs else None)  # [N, V]
        logits = apply_bias_penalties_bans(logits, meta)
        if meta.all_greedy:
            token_ids = logits.argmax(dim=-1)
        else:
            sampled = self._sample(logits, meta)
            token_ids = torch.where(meta.is_greedy, logits.argmax(dim=-1), sampled)
        return _with_logprobs(token_ids, raw, raw_logprobs, meta.max_num_logprobs)

    def _sample(self, logits: torch.Tensor, meta: SamplingMetadata) -> torch.Tensor:
        logits = logits / meta.temperature.unsqueeze(1)  # [N, V]
        if meta.needs_min_p:
            logits = apply_min_p(logits, meta.min_p)
        if meta.needs_top_k or meta.needs_top_p:
            logits = apply_top_k_top_p(logits, meta.top_k if meta.needs_top_k else None,
                                       meta.top_p if meta.needs_top_p else None)
        probs = torch.softmax(logits, dim=-1)  # [N, V]
        noise = self._exponential_noise(probs, meta)  # [N, V]
        return (probs / noise).argmax(dim=-1)

    def _exponential_noise(self, probs: torch.Tensor, meta: SamplingMetadata) -> torch.Tensor:
        noise = torch.empty_like(probs)  # [N, V]
        if len(meta.seeded_rows) < meta.num_rows:
            # Seeded rows get overwritten below; drawing them here too keeps one launch.
            noise.exponential_(generator=self._shared_generator(probs.device))
        for row, seq_id, seed in meta.seeded_rows:
            # One [V] draw per sampled token, whatever the batch: the stream advances by the
            # same amount every step, so the sequence's tokens are reproducible.
            noise[row].exponential_(generator=self._generator(seq_id, seed, probs.device))
        return noise.clamp_min_(_TINY)

    def _shared_generator(self, device: torch.device) -> torch.Generator:
        if self._shared is None or self._shared.device != device:
            self._shared = torch.Generator(device=device)
            self._shared.manual_seed(self._seed)
        return self._shared

    def _generator(self, seq_id: int, seed: int, device: torch.device) -> torch.Generator:
        gen = self._generators.get(seq_id)
        if gen is None:
            gen = torch.Generator(device=device)
            gen.manual_seed(seed)
            self._generators[seq_id] = gen
        return gen


def apply_bias_penalties_bans(logits: torch.Tensor, meta: SamplingMetadata) -> torch.Tensor:
    num_rows, vocab = logits.shape
    if meta.bias_rows is not None:
        # Flat scatter_add rather than index_put_: a plain kernel, no index sorting.
        flat = meta.bias_rows * vocab + meta.bias_tokens  # [B]
        logits = logits.reshape(-1).scatter_add(0, flat, meta.bias_values).view(num_rows, vocab)
    if meta.penalties is not None:
        logits = apply_penalties(logits, meta.penalties)
    if meta.ban_rows is not None:
        # Last, so no penalty or bias can lift a banned token back above -inf.
        flat = meta.ban_rows * vocab + meta.ban_tokens  # [M]
        logits = logits.reshape(-1).scatter(0, flat, float("-inf")).view(num_rows, vocab)
    return logits


def apply_grammar_mask(logits: torch.Tensor, rows: torch.Tensor, words: torch.Tensor
                       ) -> torch.Tensor:
    """logits[rows[r], t] = -inf where bit t of words[r] is 0 (bit t: word t // 32, bit t % 32).
    The mask covers the tokenizer's vocabulary rounded up to 32; logits past it (a padded
    embedding) are never allowed. On CUDA one Triton launch writes the -inf into `logits`
    itself (kernels.grammar_mask: reads the bits, nothing else); elsewhere the bits are
    unpacked into a [R, V] boolean mask and the rows are masked out of place."""
    if logits.is_cuda:
        from cormorant.kernels.grammar_mask import apply_bitmask_

        apply_bitmask_(logits, rows, words)
        return logits
    vocab = logits.shape[1]
    shifts = torch.arange(32, dtype=torch.int32, device=words.device)  # [32]
    allowed = ((words.unsqueeze(-1) >> shifts) & 1).bool().reshape(len(rows), -1)  # [R, 32W]
    width = allowed.shape[1]
    if width < vocab:
        allowed = torch.nn.functional.pad(allowed, (0, vocab - width), value=False)
    masked = logits.index_select(0, rows).masked_fill(~allowed[:, :vocab], float("-inf"))
    return logits.index_copy(0, rows, masked)  # [N, V]


def _token_counts(ids: torch.Tensor, vocab: int) -> torch.Tensor:
    # ids: [N, L] int64 padded with -1 -> counts [N, V] float32. Padding adds 0 to token 0.
    valid = (ids >= 0).to(torch.float32)
    counts = torch.zeros(ids.shape[0], vocab, dtype=torch.float32, device=ids.device)
    return counts.scatter_add_(1, ids.clamp_min(0), valid)


def apply_penalties(logits: torch.Tensor, pen: PenaltyTensors) -> torch.Tensor:
    """Repetition (HF: prompt + output, positive / p, negative * p), then frequency and
    presence (OpenAI: output only, logit -= f * count + p * [count > 0])."""
    vocab = logits.shape[1]
    output_counts = _token_counts(pen.output_ids, vocab)  # [N, V]
    seen = (output_counts > 0) | (_token_counts(pen.prompt_ids, vocab) > 0)  # [N, V]
    rep = pen.repetition.unsqueeze(1)  # [N, 1]
    penalised = torch.where(logits < 0, logits * rep, logits / rep)
    logits = torch.where(seen, penalised, logits)
    logits = logits - pen.frequency.unsqueeze(1) * output_counts
    return logits - pen.presence.unsqueeze(1) * (output_counts > 0).to(logits.dtype)


def apply_min_p(logits: torch.Tensor, min_p: torch.Tensor) -> torch.Tensor:
    """Drop tokens with prob < min_p * max_prob, in log space: l < l_max + log(min_p).
    min_p = 0 gives a -inf threshold, so such rows are untouched."""
    threshold = logits.amax(dim=-1, keepdim=True) + torch.log(min_p).unsqueeze(1)  # [N, 1]
    return logits.masked_fill(logits < threshold, float("-inf"))


def apply_top_k_top_p(logits: torch.Tensor, top_k: torch.Tensor | None,
                      top_p: torch.Tensor | None) -> torch.Tensor:
    """Batched top-k then top-p by one ascending sort. top_k = 0 keeps all V; top_p = 1 keeps
    every token of nonzero probability. Ties at the k-th value are all kept."""
    vocab = logits.shape[1]
    sorted_logits, order = logits.sort(dim=-1)  # [N, V] ascending
    if top_k is not None:
        k = torch.where(top_k > 0, top_k, vocab).clamp_(max=vocab)  # [N]
        kth = sorted_logits.gather(1, (vocab - k).unsqueeze(1))  # [N, 1]: k-th largest
        sorted_logits = sorted_logits.masked_fill(sorted_logits < kth, float("-inf"))
    if top_p is not None:
        # Token j (ascending) goes iff the mass at or below it is <= 1 - p, i.e. the tokens
        # above it already reach p: what stays is exactly the nucleus.
        cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)  # [N, V]
        remove = cumulative <= (1.0 - top_p).unsqueeze(1)
        remove[:, -1] = False  # the most likely token always survives rounding
        sorted_logits = sorted_logits.masked_fill(remove, float("-inf"))
    return torch.empty_like(logits).scatter_(1, order, sorted_logits)


def _with_logprobs(token_ids: torch.Tensor, raw: torch.Tensor, raw_logprobs: torch.Tensor | None,
                   max_num_logprobs: int | None) -> SamplerOutput:
    if max_num_logprobs is None:
        return SamplerOutput(token_ids=token_ids)
    index = token_ids.unsqueeze(1)  # [N, 1]
    if raw_logprobs is None:  # the chosen tokens' logprobs only
        chosen = (raw.gather(1, index) - raw.logsumexp(dim=-1, keepdim=True)).squeeze(1)  # [N]
        return SamplerOutput(token_ids=token_ids, logprobs=chosen)
    chosen = raw_logprobs.gather(1, index).squeeze(1)  # [N]
    k = min(max_num_logprobs, raw_logprobs.shape[1])
    topk_values, topk_ids = raw_logprobs.topk(k, dim=-1, sorted=True)  # [N, K]
    return SamplerOutput(token_ids=token_ids, logprobs=chosen,
                         topk_ids=topk_ids, topk_values=topk_values)
