"""Throughput per image against batch size: one process, warm, after a few iterations.

Usage: python -m bench.bench_batch [--sizes 256,512] [--batches 1,2,4,8] [--iterations 12]
[--device cpu] [--precision auto]. Prints seconds per iteration for the batch and per image,
and images per hour at 500 iterations, with the ratio to batch 1.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time

from pipeline import Runtime, StyleJob, StyleParams, stylize_batch
from pipeline.demo import landscape, swirls


def per_iteration(batch: int, size: int, iterations: int, runtime: Runtime) -> float:
    """Median wall seconds per iteration, skipping the first three (allocation, autotune)."""
    jobs = [StyleJob(landscape(), [swirls(seed=i)]) for i in range(batch)]
    stamps: list[float] = []
    stylize_batch(jobs, StyleParams(size=size, iterations=iterations), runtime,
                  progress=lambda i, t: stamps.append(time.perf_counter()))
    return statistics.median(b - a for a, b in itertools.pairwise(stamps[3:]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="256,512")
    ap.add_argument("--batches", default="1,2,4,8")
    ap.add_argument("--iterations", type=int, default=12)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="auto")
    args = ap.parse_args()
    runtime = Runtime.create(args.device, args.precision)
    print(f"{runtime.device} {runtime.precision}, landscape 4:3, median of iterations "
          f"4..{args.iterations}\n")
    print("| size | batch | s/iteration (batch) | s/iteration per image | images/hour at 500 it "
          "| vs batch 1 |")
    print("|---|---|---|---|---|---|")
    for size in (int(s) for s in args.sizes.split(",")):
        base = None
        for batch in (int(b) for b in args.batches.split(",")):
            spi = per_iteration(batch, size, args.iterations, runtime)
            per_image = spi / batch
            base = base or per_image
            print(f"| {size} | {batch} | {spi:.3f} | {per_image:.3f} | "
                  f"{3600 / (per_image * 500):.1f} | {base / per_image:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
