"""Triton kernels for the GPU fast path, each with a plain PyTorch reference beside it.

Modules (each imports torch and triton; some also a sibling's helpers, as their docstrings say):
  paged_attention  one-launch paged attention for packed prefill-with-prefix + decode batches
                   (GQA-grouped tiles, optional split-KV with a reduction pass)
  kv_cache         scatter of this step's keys and values into the paged cache
  rmsnorm          RMSNorm and residual-add + RMSNorm
  rotary           neox-style rotary embedding of q and k, in place
  activation       SiLU-and-multiply of a packed gate/up projection
  qk_prep          q/k RMSNorm + rotary + KV-cache write in one launch
  gemv             batch-1 decode GEMV, optionally with an add + RMSNorm or SiLU prologue
  fp8_gemm         FP8-weight GEMV (same prologues) and GEMM, per-channel or block scales
  fp8_quant        per-token FP8 quantization of activations (optionally after add + RMSNorm
                   or SiLU-and-multiply), for the FP8 tensor-core matmuls
  int_gemm         int4/int8 weight-only GEMM and GEMV, dequantized inside the matmul

and one CPU module, no Triton: cpu_decode builds and loads the compiled CPU decode step
(csrc/cpu_decode.cpp, a torch C++ op) that models.llama_decode1 calls.

This package file imports nothing heavy, so `import cormorant.kernels` works on machines
without Triton; layers get a submodule through `load(name)`, which is None where it cannot be
imported (then they run their PyTorch reference).
"""
from __future__ import annotations

import functools
import importlib
import importlib.util
import logging
from types import ModuleType

log = logging.getLogger(__name__)


def triton_available() -> bool:
    """True when Triton can be imported (it may still lack a GPU: see TRITON_INTERPRET)."""
    return importlib.util.find_spec("triton") is not None


@functools.cache
def load(name: str) -> ModuleType | None:
    """The kernel submodule `name` (e.g. "rmsnorm"), imported once; None without Triton, or
    when importing it fails (a broken Triton install must not stop the reference path)."""
    if not triton_available():
        return None
    try:
        return importlib.import_module(f"{__name__}.{name}")
    except Exception as e:
        log.warning("Triton kernels %r unavailable (%s); using the PyTorch path", name, e)
        return None
