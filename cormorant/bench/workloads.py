"""The workloads of issue #4, deterministic from their seeds (peers regenerate them alike).

B1  nano-vllm's bench.py exactly: random.seed(0); 256 prompts of randint(100, 1024) tokens
    drawn from randint(0, 10000); then max_tokens = randint(100, 1024) per sequence;
    temperature 0.6, ignore_eos. 133,966 output tokens in all (asserted).
B2  batch-1 decode: a 128-token prompt, 256 new tokens, greedy, ignore_eos.
B3  fixed input/output lengths 128/128, 128/2048, 2048/128 and 1000/1000 (prompt counts per
    scale below; the issue fixes the shapes, not the counts, so the counts are ours).
B4  Poisson arrivals at several rates, prompts of 1,024 random tokens, 256 out.
`scale` is "full", "quick" (fewer prompts and rates where a run would be long) or "tiny" (CPU
smoke tests: same structure, small numbers). Imports sampling_params only.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field

from cormorant.sampling_params import SamplingParams

B1_OUTPUT_TOKENS = 133_966  # nano-vllm's figure for its bench.py workload
TOKEN_ID_MAX = 10_000  # prompt tokens come from randint(0, TOKEN_ID_MAX), as in nano-vllm
SCALES = ("full", "quick", "tiny")


@dataclass(frozen=True)
class OfflineWorkload:
    name: str
    prompts: list[list[int]]
    max_tokens: list[int]
    temperature: float
    description: str

    @property
    def prompt_lens(self) -> list[int]:
        return [len(p) for p in self.prompts]

    @property
    def num_output_tokens(self) -> int:
        return sum(self.max_tokens)

    def sampling_params(self) -> list[SamplingParams]:
        return [SamplingParams(temperature=self.temperature, ignore_eos=True, max_tokens=m)
                for m in self.max_tokens]

    def prefix(self, num_seqs: int) -> "OfflineWorkload":
        return OfflineWorkload(f"{self.name}[:{num_seqs}]", self.prompts[:num_seqs],
                               self.max_tokens[:num_seqs], self.temperature, self.description)

    def summary(self) -> dict:
        return {"name": self.name, "num_seqs": len(self.prompts),
                "prompt_tokens": sum(self.prompt_lens), "output_tokens": self.num_output_tokens,
                "temperature": self.temperature, "ignore_eos": True,
                "description": self.description}


def b1_workload(scale: str = "full") -> OfflineWorkload:
    """nano-vllm's bench.py, in its order of random draws (prompts first, then max_tokens)."""
    num_seqs, min_len, max_len = (8, 8, 48) if scale == "tiny" else (256, 100, 1024)
    rng = random.Random(0)
    prompts = [[rng.randint(0, TOKEN_ID_MAX) for _ in range(rng.randint(min_len, max_len))]
               for _ in range(num_seqs)]
    max_tokens = [rng.randint(min_len, max_len) for _ in range(num_seqs)]
    workload = OfflineWorkload("b1", prompts, max_tokens, 0.6,
                               f"nano-vllm bench: {num_seqs} seqs, prompt and output lengths "
                               f"randint({min_len}, {max_len}), temperature 0.6, ignore_eos")
    if scale != "tiny":
        assert workload.num_output_tokens == B1_OUTPUT_TOKENS, workload.num_output_tokens
    return workload


def random_prompts(num: int, length: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randint(0, TOKEN_ID_MAX) for _ in range(length)] for _ in range(num)]


@dataclass(frozen=True)
class DecodeWorkload:
    """B2: one sequence, timed token by token."""

    prompt_len: int
    new_tokens: int
    models: tuple[str, ...]

    def prompt(self, seed: int = 2) -> list[int]:
        return random_prompts(1, self.prompt_len, seed)[0]


def b2_workload(scale: str = "full") -> DecodeWorkload:
    if scale == "tiny":
        return DecodeWorkload(16, 16, ("qwen3-0.6b", "llama-3.1-8b"))
    return DecodeWorkload(128, 256, ("qwen3-0.6b", "llama-3.1-8b"))


# (input_len, output_len) -> number of prompts, per scale. Chosen so that the floor of the
# whole of B3 on an H100 is ~42 s (full) or ~23 s (quick): 128/2048 cannot go below 2048
# sequential steps of reading 15 GB of weights (~10 s) whatever the count.
B3_SHAPES = ((128, 128), (128, 2048), (2048, 128), (1000, 1000))
B3_COUNTS = {"full": (512, 64, 128, 128), "quick": (128, 16, 32, 32), "tiny": (4, 2, 2, 2)}
B3_TINY_SHAPES = ((8, 8), (8, 32), (32, 8), (16, 16))


def b3_workloads(scale: str = "full") -> list[OfflineWorkload]:
    shapes = B3_TINY_SHAPES if scale == "tiny" else B3_SHAPES
    out = []
    for k, ((inp, outp), num) in enumerate(zip(shapes, B3_COUNTS[scale])):
        out.append(OfflineWorkload(f"b3-{inp}/{outp}", random_prompts(num, inp, seed=30 + k),
                                   [outp] * num, 0.6,
                                   f"{num} prompts of {inp} random tokens, {outp} out"))
    return out


@dataclass(frozen=True)
class ServingRun:
    rate: float  # requests per second (Poisson)
    prompts: list[list[int]]
    arrival_offsets: list[float]  # seconds from the start of the run
    max_tokens: int


@dataclass(frozen=True)
class ServingWorkload:
    model: str
    prompt_len: int
    output_len: int
    rates: tuple[float, ...]
    seconds_per_rate: float  # how long arrivals last at each rate
    min_requests: int
    max_requests: int
    temperature: float = 0.6
    runs_seed: int = 40
    notes: list[str] = field(default_factory=list)

    def num_requests(self, rate: float) -> int:
        return int(min(self.max_requests, max(self.min_requests, rate * self.seconds_per_rate)))

    def run(self, rate: float) -> ServingRun:
        n = self.num_requests(rate)
        seed = self.runs_seed + int(rate * 1000)
        rng = random.Random(seed)
        offsets, now = [], 0.0
        for _ in range(n):
            offsets.append(now)
            now += rng.expovariate(rate)
        return ServingRun(rate, random_prompts(n, self.prompt_len, seed + 1), offsets,
                          self.output_len)


def b4_workload(scale: str = "full") -> ServingWorkload:
    if scale == "tiny":
        return ServingWorkload("qwen3-0.6b", 32, 8, (2.0, 8.0), 1.0, 3, 6)
    if scale == "quick":
        return ServingWorkload("qwen3-0.6b", 1024, 256, (8.0, 32.0, 64.0), 6.0, 32, 400)
    return ServingWorkload("qwen3-0.6b", 1024, 256, (4.0, 8.0, 16.0, 32.0, 48.0, 64.0, 96.0),
                           15.0, 64, 1200)
