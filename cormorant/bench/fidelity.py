"""bf16 fidelity: cormorant's and transformers' low-precision logits, each against fp32.

Pure functions shared by the CPU test (tests/fidelity) and the GPU check
(benchmarks/gpu_engine_check.py, part "fidelity"):
    hf = make_hf_model("qwen2", seed=0)                  # tiny random transformers model, fp32
    save_checkpoint(hf, path)                             # safetensors, for cormorant's loader
    seqs = fixed_sequences(vocab_size)                    # teacher-forced token sequences
    ref = hf_logits(hf, seqs)                             # fp32 reference, [len, vocab] each
    ours = paged_logits(model, config, seqs, prefill)     # cormorant: prefill + 1-token decodes
    stats = compare(ours, ref)                            # top-1 agreement, KL(ref || ours)
    verdict = judge(ours_stats, hf_bf16_stats)            # as close to fp32 as transformers?
`runner_logits` does the same through a ModelRunner (its input packing and, on CUDA, its
decode graphs). Every position is scored under teacher forcing: the token sequence is fixed,
so one early flip cannot make the rest of a sequence differ.
Imports torch, transformers (lazily), cormorant models/layers/runner.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import torch

from cormorant.layers.attention import AttentionMetadata

# name -> (transformers class prefix, config overrides): the GPU check's three shape families.
FAMILIES = {
    "llama": ("Llama", dict(hidden_size=256, intermediate_size=512, num_hidden_layers=3,
                            num_attention_heads=4, num_key_value_heads=2)),  # head_dim 64
    "qwen2": ("Qwen2", dict(hidden_size=512, intermediate_size=512, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=1,
                            tie_word_embeddings=True)),  # head_dim 128, GQA 4, q/k/v bias
    "qwen3": ("Qwen3", dict(hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2, head_dim=128)),
}
COMMON = dict(vocab_size=512, max_position_embeddings=512, rms_norm_eps=1e-6, bos_token_id=0,
              eos_token_id=2, tie_word_embeddings=False)
# cormorant's bf16 may be this much further from fp32 than transformers' bf16 (same run):
# mean KL <= KL_RATIO * hf's + KL_FLOOR, top-1 agreement >= hf's - AGREEMENT_MARGIN.
KL_RATIO, KL_FLOOR, AGREEMENT_MARGIN = 1.5, 1e-4, 0.03


def make_hf_model(family: str, seed: int = 0, std: float = 0.2, bias_std: float = 0.2,
                  **overrides):
    """A tiny transformers model of FAMILIES[family], fp32, eager attention, every parameter
    random: matrices N(0, std) (sharp, tie-free distributions), biases N(0, bias_std), norm
    weights N(1, 0.1)."""
    import transformers

    prefix, shape = FAMILIES[family]
    config = getattr(transformers, f"{prefix}Config")(**{**COMMON, **shape, **overrides})
    torch.manual_seed(seed)
    model = getattr(transformers, f"{prefix}ForCausalLM")(config).float().eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if "norm" in name:
                p.copy_(1.0 + 0.1 * noise)
            else:
                p.copy_((bias_std if name.endswith("bias") else std) * noise)
    model.config._attn_implementation = "eager"
    return model


def save_checkpoint(hf_model, path: str | Path) -> str:
    hf_model.save_pretrained(str(path), safe_serialization=True)
    return str(path)


def fixed_sequences(vocab_size: int, num: int = 4, length: int = 48, seed: int = 0
                    ) -> list[list[int]]:
    """`num` deterministic token sequences of `length` (ids 3.. vocab_size - 1)."""
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(3, vocab_size, (length,), generator=gen).tolist() for _ in range(num)]


@torch.no_grad()
def hf_logits(hf_model, seqs: list[list[int]], device: str | torch.device = "cpu"
              ) -> list[torch.Tensor]:
    """transformers' float32 logits of every position of each sequence (full forwards)."""
    return [hf_model(torch.tensor([s], device=device)).logits[0].float().cpu() for s in seqs]


def _metadata(tables: list[list[int]], seq_lens: list[int], query_lens: list[int],
              block_size: int, device) -> AttentionMetadata:
    slots, starts = [], [0]
    for table, seq_len, q in zip(tables, seq_lens, query_lens):
        slots += [table[p // block_size] * block_size + p % block_size
                  for p in range(seq_len - q, seq_len)]
        starts.append(starts[-1] + q)

    def t(x, dtype):
        return torch.tensor(x, dtype=dtype, device=device)
    return AttentionMetadata(t(slots, torch.int64), t(starts, torch.int32),
                             t(seq_lens, torch.int32), t(tables, torch.int32),
                             max(query_lens), max(seq_lens), list(query_lens), list(seq_lens))


@torch.no_grad()
def paged_logits(model, config, seqs: list[list[int]], prefill: int, block_size: int = 16
                 ) -> list[torch.Tensor]:
    """cormorant's float32 logits of every position: the first `prefill` tokens of all
    sequences in one packed prefill, then the rest one token per sequence per step (a packed
    decode batch), through the model's own attention backend and a paged KV cache."""
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    length = len(seqs[0])
    per_seq = -(-length // block_size)
    tables = [list(range(i * per_seq, (i + 1) * per_seq)) for i in range(len(seqs))]
    shape = (2, per_seq * len(seqs), block_size, config.num_kv_heads, config.head_dim)
    caches = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.num_layers)]
    out: list[list[torch.Tensor]] = [[] for _ in seqs]
    done = 0
    while done < length:
        q = prefill if done == 0 else 1
        ids = [t for s in seqs for t in s[done:done + q]]
        pos = [p for _ in seqs for p in range(done, done + q)]
        meta = _metadata(tables, [done + q] * len(seqs), [q] * len(seqs), block_size, device)
        hidden = model(torch.tensor(ids, device=device), torch.tensor(pos, device=device),
                       caches, meta)
        logits = model.compute_logits(hidden).float().cpu()
        for i, part in enumerate(logits.split(q)):
            out[i].append(part)
        done += q
    return [torch.cat(parts) for parts in out]


@torch.no_grad()
def runner_logits(runner, seqs: list[list[int]], prefill: int) -> list[torch.Tensor]:
    """As paged_logits, through a ModelRunner: its input packing, and its decode graphs
    (runner.graphs: captured on CUDA, or graphs.use_eager() to run their padded buffers
    eagerly) for the one-token steps."""
    from cormorant.engine.batch_builder import BatchBuilder
    from cormorant.engine.scheduler import SchedulerOutput
    from cormorant.engine.sequence import Sequence
    from cormorant.sampling_params import SamplingParams

    block_size = runner.config.cache.block_size
    per_seq = -(-len(seqs[0]) // block_size)
    states = []
    for i, s in enumerate(seqs):
        seq = Sequence(f"fid{i}", list(s), SamplingParams(temperature=0.0, max_tokens=1))
        seq.block_table = list(range(i * per_seq, (i + 1) * per_seq))
        states.append(seq)
    out: list[list[torch.Tensor]] = [[] for _ in seqs]
    builder, done = BatchBuilder(), 0
    with torch.inference_mode():
        while done < len(seqs[0]):
            q = prefill if done == 0 else 1
            last = done + q == len(seqs[0])
            batch = builder.build(SchedulerOutput(states, [q] * len(states),
                                                  [last] * len(states)))
            rows = runner.requests.update(batch)
            bucket = (runner.graphs.bucket(batch.num_new_tokens)
                      if runner.graphs is not None else None)
            host = runner.inputs.prepare(rows, batch, pad_to=bucket)
            if bucket is None:
                inputs = runner.inputs.to_device(host)
                hidden = runner.model(inputs.input_ids, inputs.positions, runner.kv_caches,
                                      inputs.attn)
            else:
                hidden = runner.graphs.run(host)[0]
                runner.inputs.staging.mark_copied()
            logits = runner.model.compute_logits(hidden).float().cpu()
            for i, part in enumerate(logits.split(q)):
                out[i].append(part)
            for seq in states:
                seq.num_computed_tokens += q
            done += q
    return [torch.cat(parts) for parts in out]


@dataclasses.dataclass
class Stats:
    """Agreement of one run's logits with the fp32 reference, over all scored positions."""
    positions: int
    top1: float  # fraction of positions whose argmax equals the reference's
    kl_mean: float  # mean over positions of KL(reference || run), nats
    kl_max: float

    def __str__(self) -> str:
        return f"top-1 {self.top1:.4f}, KL mean {self.kl_mean:.2e} max {self.kl_max:.2e}"


def compare(run: list[torch.Tensor], ref: list[torch.Tensor]) -> Stats:
    logits, ref_logits = torch.cat(run).float(), torch.cat(ref).float()
    logp, ref_logp = logits.log_softmax(-1), ref_logits.log_softmax(-1)
    kl = (ref_logp.exp() * (ref_logp - logp)).sum(-1).clamp_min(0)
    top1 = (logits.argmax(-1) == ref_logits.argmax(-1)).float().mean()
    return Stats(len(kl), float(top1), float(kl.mean()), float(kl.max()))


def judge(ours: Stats, hf: Stats, kl_ratio: float = KL_RATIO, kl_floor: float = KL_FLOOR,
          margin: float = AGREEMENT_MARGIN) -> list[str]:
    """What is wrong with cormorant's low-precision run next to transformers' (empty: ok)."""
    problems = []
    if not math.isfinite(ours.kl_mean) or ours.kl_mean > kl_ratio * hf.kl_mean + kl_floor:
        problems.append(f"KL mean {ours.kl_mean:.2e} > {kl_ratio} x transformers' "
                        f"{hf.kl_mean:.2e} + {kl_floor:.0e}")
    if ours.top1 < hf.top1 - margin:
        problems.append(f"top-1 {ours.top1:.4f} < transformers' {hf.top1:.4f} - {margin}")
    return problems


# ------------------------------------------------------------------ engine variants (GPU check)
# name -> (attention backend, eager, one sequence per batch). "padded" runs the decode graphs'
# buffers and padding eagerly (the CPU stand-in for graphs); "bs1" decodes each sequence alone,
# which on CUDA takes the fused norm/activation + GEMV path (layers.fused_decode).
VARIANTS = {"triton+graphs": ("triton", False, False), "triton eager": ("triton", True, False),
            "triton+graphs bs1": ("triton", False, True), "torch eager": ("torch", True, False),
            "torch padded": ("torch", True, False)}


def build_runner(model, model_config, device: str, eager: bool, num_seqs: int, length: int,
                 block_size: int = 16):
    """A ModelRunner over `model` with KV room for num_seqs sequences of `length` tokens."""
    from cormorant.config import CacheConfig, EngineConfig, SchedulerConfig
    from cormorant.runner.model_runner import ModelRunner

    dtype = next(model.parameters()).dtype
    config = EngineConfig(
        model="fidelity", dtype=str(dtype)[6:], device=device,
        cache=CacheConfig(block_size=block_size,
                          num_blocks=num_seqs * -(-length // block_size) + 1),
        scheduler=SchedulerConfig(max_num_seqs=max(num_seqs, 1),
                                  max_num_batched_tokens=max(num_seqs * length, 64),
                                  max_model_len=max(length, 64)),
        enforce_eager=eager)
    return ModelRunner(config, model_config, model, torch.device(device), dtype, ())


def variant_logits(path: str, variant: str, seqs: list[list[int]], prefill: int,
                   device: str, dtype: torch.dtype = torch.bfloat16) -> list[torch.Tensor]:
    """Teacher-forced logits of cormorant (checkpoint `path`) run as VARIANTS[variant]."""
    from cormorant.frontend.builder import attention_backend
    from cormorant.models.loader import load_model

    backend, eager, alone = VARIANTS[variant]
    model, config = load_model(path, dtype, device, attention_backend(backend,
                                                                      torch.device(device)))
    batches = [[s] for s in seqs] if alone else [seqs]
    runner = build_runner(model, config, device, eager, len(batches[0]), len(seqs[0]))
    if variant.startswith("triton+graphs") and runner.graphs is None:
        raise RuntimeError("CUDA graphs were not captured")
    if variant == "torch padded":
        runner.graphs = runner.new_decode_graphs()
        runner.graphs.use_eager()
    return [out for batch in batches for out in runner_logits(runner, batch, prefill)]
