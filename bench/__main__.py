"""`make bench` / `python -m bench [NAME ...]` (names: BENCHMARKS below; default all):
every benchmark, each printing its figures and its ratios against a baseline measured in the same run
(machines are noisy; absolute numbers are not)."""

from __future__ import annotations

import importlib
import sys
import time

BENCHMARKS = (
    "attention",
    "decode",
    "data",
    "loop",
    "throughput",
    "checkpoint",
    "documents",
    "sources",
    "parallel",
    "plan",
    "moe",
    "loss",
)


def main(argv: list[str] | None = None) -> None:
    names = list(argv if argv is not None else sys.argv[1:]) or list(BENCHMARKS)
    unknown = [name for name in names if name not in BENCHMARKS]
    if unknown:
        raise SystemExit(f"unknown benchmark(s) {unknown}; expected any of {list(BENCHMARKS)}")
    for name in names:
        print(f"\n=== bench.{name} ===", flush=True)
        start = time.perf_counter()
        importlib.import_module(f"bench.{name}").main([])
        print(f"=== bench.{name} took {time.perf_counter() - start:.1f} s ===", flush=True)


if __name__ == "__main__":
    main()
