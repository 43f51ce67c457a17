"""Physical floors: device ceilings measured in the run, and the least time a workload can take.

Ceilings (measure_ceilings): a large device-to-device copy (bytes read + written, median of
several) and a large square matmul in the model dtype (2 n^3 FLOPs, median of several).

Cost of one forward step (StepCost.time), the model of the floor:
  bytes = weights read once per step (every matmul weight and norm; the input embedding only
          when it is tied to the LM head, since an untied table is only gathered row by row)
        + KV cache read: every context token of every sequence in the step
        + KV cache written: one entry per token processed
  flops = 2 x body matmul params x tokens + 2 x LM-head params x sampled rows
        + attention: 4 x layers x heads x head_dim per (query token, context token) pair
  time  = max(bytes / copy bandwidth, flops / matmul rate)
Activations are ignored (small next to these), so this is a lower bound on every step.

A workload's floor (simulate) sums that over the steps an ideal scheduler would run under the
engine's own limits: decode every running sequence each step, fill the rest of the token
budget with chunked prefill in arrival order, admit a sequence only when its whole
prompt + output fits the KV capacity (so it never preempts), and sample a prompt's first
token in the step that finishes its prefill. Imports torch and config only.
"""
from __future__ import annotations

import statistics
import time
from collections import defaultdict, deque
from dataclasses import asdict, dataclass

import torch

from cormorant.config import ModelConfig


@dataclass(frozen=True)
class Ceilings:
    device_name: str
    copy_bytes_per_s: float  # bytes read + written per second
    matmul_flops_per_s: float
    dtype: str

    def to_dict(self) -> dict:
        return {**asdict(self), "copy_TBps": self.copy_bytes_per_s / 1e12,
                "matmul_TFLOPs": self.matmul_flops_per_s / 1e12}


def _timed(device: torch.device, fn, repeats: int) -> list[float]:
    """Seconds per call of fn, one sample per call, after two warm-up calls."""
    for _ in range(2):
        fn()
    samples = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - t0)
    return samples


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return f"cpu ({platform.processor() or platform.machine()})"


@torch.no_grad()
def measure_ceilings(device: torch.device, dtype: torch.dtype, repeats: int = 10,
                     fp8: bool = False) -> Ceilings:
    """Copy bandwidth and matmul rate on `device`; sizes shrink on the CPU (smoke runs).
    fp8: the matmul rate is FP8's (torch._scaled_mm, rowwise scales) where CUDA has it."""
    is_gpu = device.type == "cuda"
    num_bytes = (1 << 30) if is_gpu else (32 << 20)
    src = torch.empty(num_bytes, dtype=torch.uint8, device=device).random_(0, 255)
    dst = torch.empty_like(src)
    copy_s = statistics.median(_timed(device, lambda: dst.copy_(src), repeats))
    del src, dst
    n = 8192 if is_gpu else 256
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    out = torch.empty(n, n, device=device, dtype=dtype)
    mm_s = statistics.median(_timed(device, lambda: torch.mm(a, b, out=out), repeats))
    name = str(dtype).removeprefix("torch.")
    if fp8 and is_gpu and torch.cuda.get_device_capability(device) >= (8, 9):
        a8, b8 = a.to(torch.float8_e4m3fn), b.to(torch.float8_e4m3fn).t()  # b8 column-major
        sa, sb = torch.ones(n, 1, device=device), torch.ones(1, n, device=device)
        mm_s = statistics.median(_timed(device, lambda: torch._scaled_mm(
            a8, b8, scale_a=sa, scale_b=sb, out_dtype=torch.bfloat16), repeats))
        name = "float8_e4m3fn"
        del a8, b8
    del a, b, out
    return Ceilings(device_name(device), 2 * num_bytes / copy_s, 2 * n**3 / mm_s, name)


@dataclass(frozen=True)
class StepCost:
    """Per-step byte and FLOP coefficients of one model configuration."""

    body_params: int  # matmul weights every token goes through
    head_params: int  # LM head, applied to sampled rows only
    weight_bytes: int  # read once per step
    kv_bytes_per_token: int
    attn_flops_per_pair: int  # per (query token, context token) pair, all layers

    @classmethod
    def of(cls, cfg: ModelConfig, dtype_bytes: int = 2, body_bytes: float | None = None, *,
           kv_dtype_bytes: int | None = None) -> "StepCost":
        """body_bytes: bytes per decoder-projection weight when it differs from the dtype's
        (quantized weights: codes plus scales; the head, embeddings and norms keep dtype);
        kv_dtype_bytes: a KV-cache element's size when it differs (1: an fp8 cache)."""
        kv_bytes = dtype_bytes if kv_dtype_bytes is None else kv_dtype_bytes
        h, d = cfg.hidden_size, cfg.head_dim
        qkv = h * (cfg.num_heads + 2 * cfg.num_kv_heads) * d
        o_proj = cfg.num_heads * d * h
        mlp = 3 * h * cfg.intermediate_size
        bias = (cfg.num_heads + 2 * cfg.num_kv_heads) * d if cfg.attention_bias else 0
        norms = 2 * h + (2 * d if cfg.qk_norm else 0)
        body = cfg.num_layers * (qkv + o_proj + mlp)
        head = cfg.vocab_size * h
        small = cfg.num_layers * (bias + norms) + h
        return cls(body_params=body, head_params=head,
                   weight_bytes=round(body * (body_bytes or dtype_bytes)
                                      + (head + small) * dtype_bytes),
                   kv_bytes_per_token=2 * cfg.num_layers * cfg.num_kv_heads * d * kv_bytes,
                   attn_flops_per_pair=4 * cfg.num_layers * cfg.num_heads * d)

    def step(self, ceil: Ceilings, *, num_tokens: int, num_sampled: int, kv_read_tokens: int,
             attn_pairs: int) -> tuple[float, int, int]:
        """(floor seconds, bytes, flops) of one forward step."""
        num_bytes = self.weight_bytes + self.kv_bytes_per_token * (kv_read_tokens + num_tokens)
        flops = (2 * self.body_params * num_tokens + 2 * self.head_params * num_sampled
                 + self.attn_flops_per_pair * attn_pairs)
        seconds = max(num_bytes / ceil.copy_bytes_per_s, flops / ceil.matmul_flops_per_s)
        return seconds, num_bytes, flops

    def decode_step(self, ceil: Ceilings, batch: int, context: int) -> tuple[float, int, int]:
        """One decode step of `batch` sequences that each attend over `context` tokens."""
        return self.step(ceil, num_tokens=batch, num_sampled=batch,
                         kv_read_tokens=batch * context, attn_pairs=batch * context)


@dataclass(frozen=True)
class Limits:
    max_num_seqs: int
    max_num_batched_tokens: int
    kv_capacity_tokens: int | None = None  # None: unbounded


@dataclass
class Floor:
    seconds: float = 0.0
    steps: int = 0
    bytes: int = 0
    flops: int = 0
    memory_bound_steps: int = 0
    output_tokens: int = 0

    def add(self, seconds: float, num_bytes: int, flops: int, ceil: Ceilings) -> None:
        self.seconds += seconds
        self.steps += 1
        self.bytes += num_bytes
        self.flops += flops
        if num_bytes / ceil.copy_bytes_per_s >= flops / ceil.matmul_flops_per_s:
            self.memory_bound_steps += 1

    def to_dict(self) -> dict:
        tok_s = self.output_tokens / self.seconds if self.seconds else None
        return {**asdict(self), "output_tokens_per_s": tok_s}


def _pairs(start: int, end: int) -> int:
    """Causal (query, context) pairs for prompt positions [start, end): sum of p + 1."""
    return (end * (end + 1) - start * (start + 1)) // 2


def simulate(prompt_lens: list[int], output_lens: list[int], cost: StepCost, ceil: Ceilings,
             limits: Limits) -> Floor:
    """The floor of an offline workload, summed over an ideal schedule (module docstring)."""
    waiting = deque(range(len(prompt_lens)))
    prefilling: deque[list[int]] = deque()  # [seq index, prompt tokens done]
    finish_at: dict[int, list[tuple[int, int]]] = defaultdict(list)  # step -> (ctx, kv)
    num_dec = sum_ctx = reserved = 0
    floor = Floor(output_tokens=sum(output_lens))
    while waiting or prefilling or num_dec:
        while (waiting and num_dec + len(prefilling) < limits.max_num_seqs
               and _fits(limits, reserved, prompt_lens[waiting[0]] + output_lens[waiting[0]])):
            i = waiting.popleft()
            reserved += prompt_lens[i] + output_lens[i]
            prefilling.append([i, 0])
        if not prefilling and not num_dec:
            raise ValueError("a sequence is longer than the KV capacity")
        budget = limits.max_num_batched_tokens - num_dec
        tokens, sampled, kv_read, pairs = num_dec, num_dec, sum_ctx, sum_ctx
        done_prefill = []
        for entry in prefilling:
            if budget <= 0:
                break
            i, start = entry
            end = min(prompt_lens[i], start + budget)
            budget -= end - start
            tokens += end - start
            kv_read += start
            pairs += _pairs(start, end)
            entry[1] = end
            if end == prompt_lens[i]:
                done_prefill.append(i)
                sampled += 1
        step = floor.steps
        floor.add(*cost.step(ceil, num_tokens=tokens, num_sampled=sampled,
                             kv_read_tokens=kv_read, attn_pairs=pairs), ceil)
        sum_ctx += num_dec  # every decoder's context grows by its new token
        for i in done_prefill:
            prefilling.popleft()
            p, m = prompt_lens[i], output_lens[i]
            if m == 1:
                reserved -= p + m
                continue
            num_dec += 1
            sum_ctx += p + 1  # its first decode step attends over the prompt + 1 token
            finish_at[step + m - 1].append((p + m, p + m))
        for ctx, kv in finish_at.pop(step, []):
            num_dec -= 1
            sum_ctx -= ctx
            reserved -= kv
    return floor


def _fits(limits: Limits, reserved: int, need: int) -> bool:
    return limits.kv_capacity_tokens is None or reserved + need <= limits.kv_capacity_tokens
