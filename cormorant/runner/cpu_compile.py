"""Compiled CPU decode (opt-in): each decoder layer's decode step through torch.compile.

On the CPU there are no CUDA graphs; what a decode token costs beyond its arithmetic is the
interpreter: some 40 small ops a layer (norms, rotary, casts, views) each dispatched from
Python. `CompiledDecode` wraps every decoder layer so that pure-decode steps (every row one new
token) run it compiled: generated C++ loops fuse the norms, residual adds, rotary, SiLU and
casts around the weight matmuls. The attention (cache write and paged read) and the int4
matmuls are opaque custom ops inside the graph (runner.cpu_attention_op, layers.gguf_linear),
so a layer is one graph with no break.

One layer is compiled, not the whole model: the layers share their code and Dynamo lifts
their weights to graph inputs, so every layer runs the same compiled graphs (compiling the
unrolled 30-layer SmolLM2 took minutes and gigabytes). The embedding, the final norm and the
loop over the layers stay eager. Recompiles are bounded: batch size 1 has its own graphs,
2..n one dynamic set, and the first layer (no residual yet) its own. `warm_up` compiles them
all at start-up and logs the time; prefill and mixed steps run eagerly. Inductor's FX graph
cache lives under ~/.cache/cormorant/inductor (TORCHINDUCTOR_CACHE_DIR, unless set), so the
next start of the same model reuses the generated code.

Opt-in, CORMORANT_CPU_COMPILE=1 (and not `enforce_eager`): measured on SmolLM2-135M with one
thread it does not beat the eager step yet (benchmarks/RESULTS.md, B5): 30 compiled-graph
calls a token (guards, runtime wrappers) cost about what the fused small ops save.
Compiled output is not bit-identical to the eager path (other summation orders); greedy tokens
match it on the tests' models.
Imports: torch, layers.attention (metadata), runner.cpu_attention_op.
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import torch
from torch import nn

from cormorant.layers.attention import AttentionMetadata
from cormorant.runner.cpu_attention_op import OpaqueAttention

log = logging.getLogger(__name__)

ENV_SWITCH = "CORMORANT_CPU_COMPILE"
CACHE_DIR = Path.home() / ".cache" / "cormorant" / "inductor"


def cpu_compile_enabled(device: torch.device, enforce_eager: bool) -> bool:
    """Compile the decode step: on the CPU, with CORMORANT_CPU_COMPILE=1, unless enforce_eager."""
    return (device.type == "cpu" and not enforce_eager
            and os.environ.get(ENV_SWITCH, "0") == "1")


def use_compile_cache() -> Path:
    """Point Inductor's on-disk caches (FX graph cache included) at ~/.cache/cormorant."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    if os.environ.get("TORCHINDUCTOR_CACHE_DIR") in (None, default_cache_dir()):
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(CACHE_DIR)  # torch's own /tmp default
    path = Path(os.environ["TORCHINDUCTOR_CACHE_DIR"])
    path.mkdir(parents=True, exist_ok=True)
    return path


def decoder_layers(model: nn.Module) -> nn.ModuleList | None:
    """The model's stack of decoder layers: its longest ModuleList of one layer class."""
    best = None
    for module in model.modules():
        if (isinstance(module, nn.ModuleList) and len(module)
                and len({type(m) for m in module}) == 1
                and (best is None or len(module) > len(best))):
            best = module
    return best


def _layer_step(layer: nn.Module, positions, hidden, residual, kv_cache, meta):
    return layer(positions, hidden, residual, kv_cache, meta)


class CompiledLayer(nn.Module):
    """A decoder layer that runs compiled for pure-decode steps, eagerly otherwise."""

    def __init__(self, layer: nn.Module, step) -> None:
        super().__init__()
        self.layer = layer
        self._step = step

    def forward(self, positions, hidden, residual, kv_cache, meta: AttentionMetadata):
        if meta.max_query_len != 1:
            return self.layer(positions, hidden, residual, kv_cache, meta)
        return self._step(self.layer, positions, hidden, residual, kv_cache, meta)


class CompiledDecode:
    """Wraps the model's decoder layers (in place) so decode steps run them compiled."""

    def __init__(self, model: nn.Module) -> None:
        layers = decoder_layers(model)
        if layers is None:
            raise ValueError(f"{type(model).__name__} has no decoder layers to compile")
        use_compile_cache()
        self.model = model
        for module in model.modules():  # the attention as one op: no graph break
            backend = getattr(module, "attn_backend", None)
            if backend is not None and not isinstance(backend, OpaqueAttention):
                module.attn_backend = OpaqueAttention(backend)
        # dynamic=True: activation sizes are symbolic from the first compile (weights stay
        # static), except a batch of 1, which Dynamo always specialises: two sets of graphs.
        # cpp.threads 1: the generated loops of a decode step are a few thousand elements,
        # too small to split; an OpenMP team per loop only waits on its slowest thread (on a
        # shared 2-core machine, 2 threads made decode 50x slower). The weight matmuls are
        # ATen calls and keep the process's threads.
        # Batch 1 / 2..n, first layer or not, context widths: more variants than Dynamo's
        # default of 8 before it gives up (with fullgraph, by raising mid-serving).
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        self.step = torch.compile(_layer_step, fullgraph=True, dynamic=True,
                                  options={"cpp.threads": 1})
        for i, layer in enumerate(layers):
            layers[i] = CompiledLayer(layer, self.step)

    def warm_up(self, kv_caches: list[torch.Tensor]) -> float:
        """Compile (or load from the cache) the batch-1 and the batch-n graphs; seconds taken.
        The dummy rows write slot 0 of block 0, which any real sequence writes before it
        reads it; their block tables are 2 wide, so the width is symbolic from the start."""
        start = time.perf_counter()
        with torch.inference_mode():
            for batch in (1, 2):
                zeros = torch.zeros(batch, dtype=torch.int64)
                meta = AttentionMetadata(
                    zeros.clone(), torch.arange(batch + 1, dtype=torch.int32),
                    torch.ones(batch, dtype=torch.int32),
                    torch.zeros(batch, 2, dtype=torch.int32), max_query_len=1, max_seq_len=1,
                    query_lens_cpu=[1] * batch, seq_lens_cpu=[1] * batch)
                self.model(zeros, zeros.clone(), kv_caches, meta)
        seconds = time.perf_counter() - start
        log.info("compiled the CPU decode step (batch 1 and 2..n) in %.1f s "
                 "(Inductor cache %s; --enforce-eager skips it)", seconds, use_compile_cache())
        return seconds
