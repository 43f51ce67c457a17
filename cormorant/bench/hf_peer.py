"""The transformers peer, run in its own process: `python -m cormorant.bench.hf_peer SPEC OUT`.

SPEC and OUT are JSON file paths. The spec names the kind ("cb": continuous batching for B1
and B3; "generate": generate() with a static cache for B2), the model configuration, the
workload (regenerated here from its seed, so both sides see the same token ids), device, dtype
and a time cap. The model is built by transformers itself from the same config.json dict with
its own random init (never zeros: normal(0, 0.02) matrices, ones for norms), in bf16 on the
device; it need not hold cormorant's weights since only speed is compared.

A separate process keeps the peer's memory apart from cormorant's (each sizes its KV cache
from free memory), gives a hard timeout, and turns any crash into "peer unavailable: why".
OUT is rewritten after every case, so a run killed at its timeout still reports what it did.
API differences between transformers releases (5.17 on the GPU machine, 5.24 here) are met by
passing only the keyword arguments a function accepts; what was dropped is reported.
Imports bench.configs, bench.workloads; torch, transformers.
"""
from __future__ import annotations

import gc
import inspect
import json
import sys
import time
import traceback

import torch

from cormorant.bench.configs import hf_config_dict
from cormorant.bench.workloads import OfflineWorkload, b1_workload, b2_workload, b3_workloads


def call_supported(fn, notes: list[str], /, *args, **kwargs):
    """fn(*args, **kwargs) without the keywords fn does not take (noted)."""
    params = inspect.signature(fn).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        dropped = sorted(k for k in kwargs if k not in params)
        note = f"{getattr(fn, '__name__', fn)} does not take {dropped}"
        if dropped and note not in notes:  # once, not once per request
            notes.append(note)
        kwargs = {k: v for k, v in kwargs.items() if k in params}
    return fn(*args, **kwargs)


def build_hf_model(name: str, device: str, dtype: torch.dtype):
    import transformers

    cfg_dict = hf_config_dict(name)
    model_type = cfg_dict.pop("model_type")
    cfg_dict.pop("architectures", None)
    config = transformers.AutoConfig.for_model(model_type, **cfg_dict)
    with torch.device(device):  # initialise on the device: an 8B CPU init takes minutes
        try:
            model = transformers.AutoModelForCausalLM.from_config(config, dtype=dtype)
        except TypeError:  # releases before the torch_dtype -> dtype rename
            model = transformers.AutoModelForCausalLM.from_config(config, torch_dtype=dtype)
    model = model.to(device=device, dtype=dtype).eval()
    for p in model.parameters():
        assert float(p.detach().abs().amax()) > 0, "a peer weight came out all zeros"
    return model


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


# -- B1 / B3: continuous batching --------------------------------------------------------------
def run_cb(model, workload: OfflineWorkload, cap_s: float, notes: list[str],
           warmup: bool = True) -> dict:
    """Stream the whole workload through transformers' continuous batching for at most cap_s.
    Output tokens are counted as they stream, so a capped run still measures tokens / time."""
    from transformers import GenerationConfig

    gen = GenerationConfig(max_new_tokens=max(workload.max_tokens), do_sample=True,
                           temperature=workload.temperature, top_k=0, top_p=1.0,
                           pad_token_id=0)
    start_build = time.perf_counter()
    # persistent_manager: B3's four shapes share one manager, so its CUDA-graph warm-up
    # (tens of seconds) is paid once; run_spec destroys it at the end.
    ctx = call_supported(model.continuous_batching_context_manager, notes,
                         generation_config=gen, block=True, timeout=10, warmup=warmup,
                         persistent_manager=True)
    counts: dict[str, list[int]] = {}  # request -> [outputs seen, longest, summed lengths]
    finished: set[str] = set()
    with ctx as manager:
        warmup_s = time.perf_counter() - start_build
        t0 = time.perf_counter()
        for i, (prompt, max_new) in enumerate(zip(workload.prompts, workload.max_tokens)):
            # eos -1: never stop early (ignore_eos), as cormorant and nano-vllm run it.
            call_supported(manager.add_request, notes, input_ids=prompt, request_id=f"r{i}",
                           max_new_tokens=max_new, streaming=True, eos_token_id=-1)
        deadline = t0 + cap_s
        while len(finished) < len(workload.prompts) and time.perf_counter() < deadline:
            out = manager.get_result(timeout=0.2)
            if out is None:
                if not getattr(manager, "is_running", lambda: True)():
                    notes.append("the continuous batching loop stopped early")
                    break
                continue
            c = counts.setdefault(out.request_id, [0, 0, 0])
            n = len(out.generated_tokens)
            c[0], c[1], c[2] = c[0] + 1, max(c[1], n), c[2] + n
            if out.is_finished():
                finished.add(out.request_id)
        _sync(str(model.device))
        elapsed = time.perf_counter() - t0
        cancel = getattr(manager, "cancel_request", None)
        for rid in (f"r{i}" for i in range(len(workload.prompts))):
            if rid not in finished and cancel is not None:
                cancel(rid)  # else stopping the manager would first finish them all
    # Streams carry either all tokens so far (one output per token: longest ~ outputs seen)
    # or only the new ones (longest ~ 1); count accordingly.
    outputs_seen = sum(c[0] for c in counts.values())
    is_cumulative = sum(c[1] for c in counts.values()) * 2 >= outputs_seen
    tokens = sum(c[1] if is_cumulative else c[2] for c in counts.values())
    complete = len(finished) == len(workload.prompts)
    if not complete:
        notes.append(f"capped at {cap_s:.0f} s: ran the first {elapsed:.1f} s of the workload "
                     f"({tokens} of {workload.num_output_tokens} output tokens, "
                     f"{len(finished)} of {len(workload.prompts)} sequences done); tok/s over "
                     "that window leaves out the tail where batches shrink, so it flatters "
                     "the peer")
    return {"case": workload.name, "output_tokens": tokens, "seconds": elapsed,
            "output_tokens_per_s": tokens / elapsed if elapsed else None,
            "complete": complete, "setup_s": warmup_s}


# -- B2: generate() with a static cache --------------------------------------------------------
class _Stamps:
    """A streamer that records when each token reaches the host (generate copies it there)."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def put(self, value) -> None:
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


def run_generate(model, prompt: list[int], new_tokens: int, notes: list[str]) -> dict:
    ids = torch.tensor([prompt], device=model.device)
    stamps = _Stamps()
    # An explicit mask: else a prompt token equal to pad_token_id would be masked out.
    kwargs = dict(attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                  min_new_tokens=new_tokens, do_sample=False, cache_implementation="static",
                  pad_token_id=0, streamer=stamps)
    t0 = time.perf_counter()
    with torch.inference_mode():
        model.generate(ids, **kwargs)  # warm-up: compiles the static-cache forward
        warmup_s = time.perf_counter() - t0
        stamps.times.clear()
        model.generate(ids, **kwargs)
    # times[0]: the prompt; times[1]: the first new token (prefill); then one per decode step.
    steps = [b - a for a, b in zip(stamps.times[1:], stamps.times[2:])]
    if len(steps) != new_tokens - 1:
        notes.append(f"expected {new_tokens - 1} decode steps, timed {len(steps)}")
    mean_s = sum(steps) / len(steps)
    return {"case": "decode", "ms_per_token": mean_s * 1e3,
            "median_ms": sorted(steps)[len(steps) // 2] * 1e3, "tokens_per_s": 1 / mean_s,
            "prefill_ms": (stamps.times[1] - stamps.times[0]) * 1e3, "setup_s": warmup_s}


# -- the process -------------------------------------------------------------------------------
def _workloads(spec: dict) -> list[OfflineWorkload]:
    if spec["bench"] == "b1":
        return [b1_workload(spec["scale"])]
    return b3_workloads(spec["scale"])


def run_spec(spec: dict, write) -> dict:
    import transformers

    result = {"available": True, "transformers": transformers.__version__, "cases": [],
              "notes": [], "kind": spec["kind"], "models": spec["models"]}
    dtype = getattr(torch, spec["dtype"])
    t0 = time.perf_counter()
    model = build_hf_model(spec["models"][0], spec["device"], dtype)
    result["build_s"] = time.perf_counter() - t0
    write(result)
    if spec["kind"] == "generate":
        workload = b2_workload(spec["scale"])
        for i, name in enumerate(spec["models"]):
            if i:  # one model on the device at a time
                del model
                gc.collect()
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                model = build_hf_model(name, spec["device"], dtype)
            case = run_generate(model, workload.prompt(), workload.new_tokens, result["notes"])
            result["cases"].append({**case, "model": name})
            write(result)
    else:
        for workload in _workloads(spec):
            result["cases"].append(run_cb(model, workload, spec["cap_s"], result["notes"]))
            write(result)
        if hasattr(model, "destroy_cached_continuous_batching_manager"):
            model.destroy_cached_continuous_batching_manager()
    write(result)
    return result


def main(argv: list[str]) -> int:
    spec_path, out_path = argv
    last: dict = {}

    def write(result: dict) -> None:
        last.update(result)
        with open(out_path, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1)

    with open(spec_path, encoding="utf-8") as f:
        spec = json.load(f)
    try:
        run_spec(spec, write)
    except Exception as e:  # noqa: BLE001 - any failure is the peer's answer, reported
        traceback.print_exc()
        reason = f"{type(e).__name__}: {e}"[:500]
        # Cases already done stand; with none, the peer is unavailable.
        write({**last, "error": reason} if last.get("cases")
              else {"available": False, "reason": reason})
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
