"""Per-op bisection of bf16 drift (issue #20): cormorant and transformers, each against fp32.

    python benchmarks/fidelity_probe.py [--families qwen2,llama,qwen3] [--num 4] [--len 48]

For each tiny random family of cormorant.bench.fidelity (the GPU check's shapes, biases and
norm weights random too), on CUDA if present (else the CPU, torch backend only):
1. logits: top-1 agreement and KL(fp32 || run) under teacher forcing, prefill positions and
   decode positions apart, for transformers bf16 (eager and sdpa attention) and for cormorant
   bf16 in every engine variant (Triton/torch backend, CUDA graphs/eager, batch-1 decode);
2. per op: the relative error ||x - x_fp32|| / ||x_fp32|| of every intermediate tensor
   (embedding; per layer input norm, q/k/v projection, attention output, o_proj, post norm,
   gate/up, SiLU-mul, down; final norm; logits), transformers bf16 next to cormorant bf16 per
   backend (eager: hooks cannot see inside a graph replay). The first op where cormorant's
   error jumps above transformers' is where they compute differently.
With $OUT set the numbers are also written to $OUT/fidelity_probe.json.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from cormorant.bench import fidelity  # noqa: E402
from cormorant.frontend.builder import attention_backend  # noqa: E402
from cormorant.models.loader import load_model  # noqa: E402

# (op, transformers module path(s), cormorant module path, "in"/"out") per decoder layer.
LAYER_OPS = [
    ("input_norm", ["input_layernorm"], "input_layernorm", "out"),
    ("qkv_proj", ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"],
     "self_attn.qkv_proj", "out"),
    ("attention", ["self_attn.o_proj"], "self_attn.o_proj", "in"),
    ("o_proj", ["self_attn.o_proj"], "self_attn.o_proj", "out"),
    ("post_norm", ["post_attention_layernorm"], "post_attention_layernorm", "out"),
    ("gate_up", ["mlp.gate_proj", "mlp.up_proj"], "mlp.gate_up_proj", "out"),
    ("silu_mul", ["mlp.down_proj"], "mlp.down_proj", "in"),
    ("down_proj", ["mlp.down_proj"], "mlp.down_proj", "out"),
]


def op_table(num_layers: int) -> list[tuple[str, list[str], str, str]]:
    ops = [("embed", ["model.embed_tokens"], "model.embed_tokens", "out")]
    for i in range(num_layers):
        ops += [(f"L{i}.{name}", [f"model.layers.{i}.{m}" for m in hf], f"model.layers.{i}.{c}",
                 where) for name, hf, c, where in LAYER_OPS]
    return ops + [("final_norm", ["model.norm"], "model.norm", "out"),
                  ("logits", ["lm_head"], "lm_head", "out")]


class Capture:
    """Forward hooks that keep a float32 copy of each named module's input or output, per
    call (a norm's (normed, residual) tuple gives its first element)."""

    def __init__(self, model, names: list[str], where: dict[str, str]) -> None:
        self.calls: dict[str, list[torch.Tensor]] = {n: [] for n in names}
        self.handles = []
        for name in names:
            module = model.get_submodule(name)
            self.handles.append(module.register_forward_hook(self._hook(name, where[name])))

    def _hook(self, name: str, where: str):
        def hook(_module, args, out):
            x = args[0] if where == "in" else out
            x = x[0] if isinstance(x, tuple) else x
            if not isinstance(x, torch.Tensor):  # a deferred norm (layers.norm.NormedInput):
                x = x.tensor()  # computed unfused here, once; its consumer reuses it
            self.calls[name].append(x.detach().float().cpu().clone())
        return hook

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def hf_ops(hf, seqs, ops, device) -> dict[str, torch.Tensor]:
    """op -> [S, L, d] from one batched transformers forward."""
    names = sorted({m for _, hfm, _, _ in ops for m in hfm})
    where = {m: w for _, hfm, _, w in ops for m in hfm}
    cap = Capture(hf, names, where)
    with torch.no_grad():
        hf(torch.tensor(seqs, device=device))
    cap.close()
    return {op: torch.cat([cap.calls[m][0] for m in hfm], dim=-1) for op, hfm, _, _ in ops}


def cormorant_ops(model, config, seqs, prefill, ops) -> dict[str, torch.Tensor]:
    """op -> [S, L, d] from fidelity.paged_logits: the prefill call's rows are [S * P], each
    decode call's [S]."""
    where = {c: w for _, _, c, w in ops}
    cap = Capture(model, list(where), where)
    fidelity.paged_logits(model, config, seqs, prefill)
    cap.close()
    num = len(seqs)
    out = {}
    for op, _, c, _ in ops:
        first, *rest = cap.calls[c]
        parts = [first.view(num, prefill, -1)] + [r.view(num, 1, -1) for r in rest]
        out[op] = torch.cat(parts, dim=1)
    return out


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    return float((x - ref).norm() / ref.norm().clamp_min(1e-30))


def probe_family(family: str, num: int, length: int, device: str) -> dict:
    prefill = length // 2
    hf = fidelity.make_hf_model(family, seed=0).to(device)
    path = fidelity.save_checkpoint(hf, tempfile.mkdtemp(prefix=f"fid-{family}-"))
    seqs = fidelity.fixed_sequences(hf.config.vocab_size, num, length)
    ops = op_table(hf.config.num_hidden_layers)
    ref = fidelity.hf_logits(hf, seqs, device)
    ref_ops = hf_ops(hf, seqs, ops, device)
    runs, op_runs = {}, {}
    hf16 = hf.to(torch.bfloat16)
    runs["hf bf16 eager"] = fidelity.hf_logits(hf16, seqs, device)
    op_runs["hf bf16"] = hf_ops(hf16, seqs, ops, device)
    hf16.config._attn_implementation = "sdpa"
    runs["hf bf16 sdpa"] = fidelity.hf_logits(hf16, seqs, device)
    variants = (["triton+graphs", "triton eager", "triton+graphs bs1", "torch eager"]
                if device == "cuda" else ["torch eager", "torch padded"])
    for variant in variants:
        runs[variant] = fidelity.variant_logits(path, variant, seqs, prefill, device)
    for backend in ["triton", "torch"] if device == "cuda" else ["torch"]:
        model, config = load_model(path, torch.bfloat16, device,
                                   attention_backend(backend, torch.device(device)))
        op_runs[f"ours {backend}"] = cormorant_ops(model, config, seqs, prefill, ops)
    result = {"logits": {}, "ops": {}}
    print(f"\n== {family}: logits vs fp32 ({num} x {length} tokens, prefill {prefill})")
    for name, logits in runs.items():
        pre = fidelity.compare([x[:prefill] for x in logits], [r[:prefill] for r in ref])
        dec = fidelity.compare([x[prefill:] for x in logits], [r[prefill:] for r in ref])
        result["logits"][name] = {"prefill": vars(pre), "decode": vars(dec)}
        print(f"  {name:18s} prefill {pre} | decode {dec}")
    print(f"== {family}: per-op relative error vs fp32, prefill / decode positions")
    print("  " + f"{'op':18s}" + "".join(f"{n:>22s}" for n in op_runs))
    for op, *_ in ops:
        errs = {n: (rel_err(r[op][:, :prefill], ref_ops[op][:, :prefill]),
                    rel_err(r[op][:, prefill:], ref_ops[op][:, prefill:]))
                for n, r in op_runs.items()}
        result["ops"][op] = errs
        print("  " + f"{op:18s}" + "".join(f"{p:>10.2e} / {d:<9.2e}" for p, d in errs.values()))
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default="qwen2,llama,qwen3")
    parser.add_argument("--num", type=int, default=4)
    parser.add_argument("--len", type=int, default=48)
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.backends.cuda.matmul.allow_tf32 = False  # the fp32 reference must be fp32
    torch.backends.cudnn.allow_tf32 = False
    results = {f: probe_family(f, args.num, args.len, device)
               for f in args.families.split(",")}
    out = os.environ.get("OUT")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        Path(out, "fidelity_probe.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
