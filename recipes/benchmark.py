"""Run the benchmark grid (the same as `hf-dals benchmark`); `--help` lists the options.

The quick profile on the local data, resumable, with the report afterwards:

    python recipes/benchmark.py --profile quick --data_root ../shared/data --results outputs/quick.jsonl
    hf-dals report outputs/quick.jsonl --output docs/benchmarks.md

Two processes with one CPU thread each share a 2-core machine better than one with two threads:

    OMP_NUM_THREADS=1 python recipes/benchmark.py --profile quick --data_root ../shared/data \\
        --results outputs/quick.jsonl --shard 0/2 &
    OMP_NUM_THREADS=1 python recipes/benchmark.py --profile quick --data_root ../shared/data \\
        --results outputs/quick.jsonl --shard 1/2 &
"""

from __future__ import annotations

import sys

from hf_dals.cli import main

if __name__ == "__main__":
    sys.exit(main(["benchmark", *sys.argv[1:]]))
