"""The cost of computing the objective by blocks: seconds per iteration of the same L-BFGS
stage run whole and by blocks of several sides, at a size where both fit, in one process,
taking turns.

By blocks, an iteration runs the trunk forward twice (pass 1 without autograd, pass 2 with)
and recomputes each block's margin, so its cost over the whole image's is about
(1 + forward share) x (crop area / inner area).

Usage: python -m bench.bench_blocks [--size 1024] [--blocks 512,1024] [--iterations 3]
       [--device cpu]
"""

from __future__ import annotations

import statistics
import time
from dataclasses import replace

import torch

from pipeline import Runtime, StyleJob, StyleParams
from pipeline.api import prepare, setup_batch
from pipeline.gatys.engine import StageRun
from pipeline.io.examples import landscape, swirls

from .arguments import parser


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--blocks", default="512,1024")
    ap.add_argument("--iterations", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    runtime = Runtime.start(args.device, args.precision)
    params = StyleParams(size=args.size, iterations=100, tol=0)
    w, h = args.size, args.size * 3 // 4
    job = prepare(StyleJob(landscape(w, h), [swirls()]), params)
    problem = setup_batch([job], params, runtime)
    stage = problem.stages[-1]
    sides = [0] + [int(s) for s in args.blocks.split(",")]
    runs = {side: StageRun.start(problem.trunk, problem.x0, replace(stage, block=side), 0, None,
                                 params, runtime) for side in sides}
    for run in runs.values():
        run.step()  # warm-up: allocations, oneDNN primitives
    times: dict[int, list[float]] = {side: [] for side in sides}
    for _ in range(args.rounds):
        for side, run in runs.items():
            start = time.perf_counter()
            for _ in range(args.iterations):
                run.step()
            if runtime.device.type == "cuda":
                torch.cuda.synchronize(runtime.device)
            times[side].append((time.perf_counter() - start) / args.iterations)
    base = statistics.median(times[0])
    print(f"{w}x{h}, {runtime.precision}, median of {args.rounds} rounds of "
          f"{args.iterations} iterations")
    print("| objective | s/iteration | vs whole |\n|---|---:|---:|")
    for side in sides:
        t = statistics.median(times[side])
        name = "whole image" if not side else f"blocks of {side} px"
        print(f"| {name} | {t:.2f} | {t / base:.2f}x |")


if __name__ == "__main__":
    main()
