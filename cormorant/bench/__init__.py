"""The benchmark suite of issue #4 (`cormorant bench`): workloads B1-B4, floors, peers, reports.

Physical floors come from ceilings measured in the same run; the peers are transformers; reports
are JSON plus a table.
The benchmarks run cormorant on random weights of a named configuration (configs.py), so no
checkpoint is needed. This package sits above every other layer (like cli.py): it may import
any of them. Entry points: cormorant.bench.cli.add_bench_args / run_bench.
"""
