"""The benchmark suite of issue #4 (`cormorant bench`): workloads B1-B4, physical floors from
ceilings measured in the same run, transformers peers, and JSON + table reporting.

The benchmarks run cormorant on random weights of a named configuration (configs.py), so no
checkpoint is needed. This package sits above every other layer (like cli.py): it may import
any of them. Entry points: cormorant.bench.cli.add_bench_args / run_bench.
"""
