"""Builds and loads the compiled CPU decode step (csrc/cpu_decode.cpp, cormorant_cpu::decode_step).

`load()` returns the op, building it first if this machine has no build of this source yet
(torch.utils.cpp_extension with ninja, -O3 -march=native: ~30 s on a 2-core VM, logged), or
None when the build or the load fails (logged once; the caller then runs its Python step) or
when CORMORANT_CPU_DECODE=python asks for the Python step (A/B runs). A build is kept per
source, torch, Python and CPU feature set (-march=native code must not run on another CPU),
under ~/.cache/cormorant/ext (CORMORANT_EXT_DIR moves it). `scripts/setup.sh` builds it at
install time: `python3 -m cormorant.kernels.cpu_decode`. The same library holds the op's own
kernels for other callers where the CPU has AVX512_BF16 (`int4_rows`, `bf16_rows`,
`int4_dequant_t`: the LM head and gguf_linear's dense path), None elsewhere.
Imports: torch (its cpp_extension only to build).
"""
from __future__ import annotations

import functools
import hashlib
import logging
import os
import platform
import sys
import time
from pathlib import Path

import torch

log = logging.getLogger(__name__)

SOURCE = Path(__file__).resolve().parents[1] / "csrc" / "cpu_decode.cpp"
# Next to the source and included by it: part of the build's key.
HEADERS = ("int4_rows.h", "bf16_rows.h")
NAME = "cormorant_cpu_decode"
# -fopenmp: at::parallel_for is inline OpenMP (torch's backend); without it the op's loops
# ran on one thread. The library links libgomp.so.1, the one torch has loaded.
CFLAGS = ["-O3", "-march=native", "-ffp-contract=off", "-fno-math-errno", "-fopenmp"]
LDFLAGS = ["-fopenmp"]
ENV = "CORMORANT_CPU_DECODE"  # "python": never the compiled step


def _cpu_flags() -> str:
    """The CPU's feature flags (what -march=native compiles for), or the machine name."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return platform.machine()


def build_dir(source: Path = SOURCE) -> Path:
    """Where this source's build for this torch, Python and CPU lives."""
    key = hashlib.sha256(b"\0".join([
        source.read_bytes(), *[(source.parent / h).read_bytes() for h in HEADERS],
        torch.__version__.encode(), sys.version.encode(),
        _cpu_flags().encode(), " ".join(CFLAGS).encode()])).hexdigest()[:16]
    root = os.environ.get("CORMORANT_EXT_DIR") or Path.home() / ".cache" / "cormorant" / "ext"
    return Path(root) / f"cpu_decode-{key}"


def build(source: Path = SOURCE) -> Path:
    """Compile the op (if this build is missing) and load it; the library's path."""
    out = build_dir(source)
    library = out / f"{NAME}.so"
    if not library.exists():
        from torch.utils import cpp_extension

        out.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        cpp_extension.load(NAME, [str(source)], extra_cflags=CFLAGS, extra_ldflags=LDFLAGS,
                           build_directory=str(out), is_python_module=False, verbose=False)
        log.warning("built the compiled CPU decode step in %.1f s (%s)",
                    time.perf_counter() - start, out)
    if not hasattr(torch.ops.cormorant_cpu, "decode_step"):
        torch.ops.load_library(str(library))
    return library


@functools.cache
def _load(source: Path) -> object | None:
    try:
        build(source)
        return torch.ops.cormorant_cpu.decode_step.default
    except Exception as e:  # a missing compiler or ninja, a compile error: the Python step
        log.warning("compiled CPU decode step unavailable (%s); using the Python step",
                    str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__)
        return None


def load() -> object | None:
    """The op cormorant_cpu::decode_step, or None (see the module docstring)."""
    if os.environ.get(ENV, "").strip().lower() == "python":
        return None
    return _load(SOURCE)


def int4_rows() -> object | None:
    """The op cormorant_cpu::int4_rows (csrc/int4_rows.h: x [M, K] bf16 times a packed int4
    weight in ATen's AVX-512 layout -> [M, N] float32), or None where `load` gives None or
    the build has no such kernel (a CPU without AVX512_BF16)."""
    if load() is None or not torch.ops.cormorant_cpu.int4_rows_built():
        return None
    return torch.ops.cormorant_cpu.int4_rows.default


def bf16_rows() -> object | None:
    """The op cormorant_cpu::bf16_rows (csrc/bf16_rows.h: x [M, K] bf16 times a bf16 weight
    packed [N / 64, K / 2, 64, 2] -> [M, N] float32), or None where `int4_rows` is None."""
    return None if int4_rows() is None else torch.ops.cormorant_cpu.bf16_rows.default


def int4_dequant_t() -> object | None:
    """The op cormorant_cpu::int4_dequant_t (weight, scales_zeros, pair) -> W^T bf16 (the
    same values as layers.gguf_linear.dequantize_t rounded to bf16, ~15x faster), or None
    where `int4_rows` is None."""
    return None if int4_rows() is None else torch.ops.cormorant_cpu.int4_dequant_t.default


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    start = time.perf_counter()
    op = load()
    print(f"cpu_decode: {'ready' if op is not None else 'UNAVAILABLE'} "
          f"({time.perf_counter() - start:.1f} s, {build_dir()})")
    sys.exit(0 if op is not None else 1)
