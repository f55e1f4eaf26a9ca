"""The CUDA-graph lever: whole L-BFGS iterations with the objective and its gradient replayed
as a CUDA graph (the CUDA default) against the same run launched eagerly from Python.

Usage: python -m bench.bench_graphs [--sizes 256,512] [--batches 1,4,8] [--iterations 60]
[--device cuda] [--precision auto].

For each size and batch, the two runs of the same batch from the same start take turns, one
iteration each. "capture" is what graphs add to the start of every batch: the warm-up
evaluations and the capture (timed once more after the runs, so cuDNN's autotuning, which
both pay, is not in it).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics

from pipeline import Runtime, StyleParams
from pipeline.accel.cuda_graph import GraphedGradient

from .bench_batch import interleaved_seconds, start_run, timed_call


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="256,512")
    ap.add_argument("--batches", default="1,4,8")
    ap.add_argument("--iterations", type=int, default=60)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--precision", default="auto")
    args = ap.parse_args()
    graphs = Runtime.start(args.device, args.precision, cuda_graphs=True)
    eager = dataclasses.replace(graphs, cuda_graphs=False)
    print(f"{graphs.device} {graphs.precision}, landscape 4:3, L-BFGS, {args.iterations} "
          "iterations, runs interleaved; median s/iteration per image over iterations 4..end\n")
    print("| size | batch | eager | CUDA graph (default) | speed-up | capture (s) |")
    print("|---|---|---|---|---|---|")
    for size in (int(s) for s in args.sizes.split(",")):
        params = StyleParams(size=size, iterations=args.iterations)
        for batch in (int(b) for b in args.batches.split(",")):
            runs = [start_run(batch, params, runtime) for runtime in (eager, graphs)]
            slow, fast = (statistics.median(s[3:])
                          for s in interleaved_seconds(runs, args.iterations))
            capture = timed_call(graphs.device,
                                 lambda run=runs[1]: GraphedGradient(run.evaluate, run.x))
            print(f"| {size} | {batch} | {slow:.4g} | {fast:.4g} | {slow / fast:.2f}x | "
                  f"{capture:.2f} |", flush=True)


if __name__ == "__main__":
    main()
