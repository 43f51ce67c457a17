"""Run the benchmark suite from a checkout without installing it: same as `cormorant bench`.

    python benchmarks/bench.py all --quick --out bench-results
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cormorant.bench.cli import main  # noqa: E402 - after the path is set

if __name__ == "__main__":
    sys.exit(main())
