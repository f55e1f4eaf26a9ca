"""The CUDA-graph lever: whole L-BFGS iterations (objective, gradient, direction and step)
replayed as a CUDA graph (the CUDA default) against the same run launched eagerly from Python.

Usage: python -m bench.bench_graphs [--sizes 256,512] [--batches 1,4,8] [--iterations 110]
[--device cuda] [--precision auto] [--profile 0].

For each size and batch, the two runs of the same batch from the same start take turns, one
iteration each; the times are the median of the last 10, once the L-BFGS history (100) is
full: a graph's products always span the whole history, eager ones only its filled part.
"of floor" is the graph's iteration against the FLOPs floor at the measured bf16 (or tf32)
matmul rate (bench.flops): the fraction of the GPU's matmul speed an iteration runs at.
"capture" is what graphs add to the start of every stage (timed once more after the runs, so
cuDNN's autotuning, which both pay, is not in it).

`--profile N`: then N more iterations of the last size and batch, graph and eager, under
torch.profiler: the device time of each kernel (on the CPU, of each op), the largest first,
per iteration and as a share of the iteration: where the gap to the floor goes.
"""

from __future__ import annotations

import dataclasses
import statistics

import torch
from torch.profiler import ProfilerActivity, profile

from pipeline import Runtime, StyleParams
from pipeline.accel.cuda_graph import GraphedIteration
from pipeline.gatys.engine import Run

from .arguments import parser
from .bench_batch import interleaved_seconds, start_run, timed_call
from .flops import gpu_rates, iteration_flops


def kernel_table(name: str, run: Run, steps: int, top: int = 25) -> None:
    """The `top` kernels (ops on the CPU) by device time over `steps` iterations of `run`."""
    cuda = run.x.device.type == "cuda"
    with profile(activities=[ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            run.step()
        if cuda:
            torch.cuda.synchronize(run.x.device)
    rows = [(e.key, e.count, e.self_device_time_total if cuda else e.self_cpu_time_total)
            for e in prof.key_averages()]
    rows = sorted((r for r in rows if r[2] > 0), key=lambda r: -r[2])
    total = sum(r[2] for r in rows)
    print(f"\n{name}: {total / steps / 1e3:.3f} ms of {'kernels' if cuda else 'ops'} per "
          "iteration" + ("" if rows else " (none recorded: the profiler cannot see inside "
                                        "this graph's replays)") + "\n")
    if not rows:
        return
    print("| kernel | calls / iteration | ms / iteration | share |\n|---|---|---|---|")
    for key, count, us in rows[:top]:
        print(f"| {key[:90]} | {count / steps:g} | {us / steps / 1e3:.3f} | {us / total:.1%} |")


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--sizes", default="256,512")
    ap.add_argument("--batches", default="1,4,8")
    ap.add_argument("--iterations", type=int, default=110)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--profile", type=int, default=0,
                    help="then profile this many iterations of the last size and batch")
    args = ap.parse_args()
    graphs = Runtime.start(args.device, args.precision, cuda_graphs=True)
    eager = dataclasses.replace(graphs, cuda_graphs=False)
    rate = gpu_rates(graphs.device)["bf16" if graphs.precision == "bf16" else "tf32"]
    print(f"{graphs.device} {graphs.precision}, landscape 4:3, L-BFGS, {args.iterations} "
          f"iterations, runs interleaved; median s/iteration per image over the last 10; "
          f"matmul {rate:.0f} TFLOP/s\n")
    print("| size | batch | eager | CUDA graph (default) | speed-up | of floor | capture (s) |")
    print("|---|---|---|---|---|---|---|")
    for size in (int(s) for s in args.sizes.split(",")):
        params = StyleParams(size=size, iterations=args.iterations)
        floor = iteration_flops(size * 3 // 4, size)["total"] / (rate * 1e12)
        for batch in (int(b) for b in args.batches.split(",")):
            runs = [start_run(batch, params, runtime) for runtime in (eager, graphs)]
            slow, fast = (statistics.median(s[-10:])
                          for s in interleaved_seconds(runs, args.iterations))
            capture = timed_call(graphs.device,
                                 lambda run=runs[1]: GraphedIteration(run))
            print(f"| {size} | {batch} | {slow:.4g} | {fast:.4g} | {slow / fast:.2f}x | "
                  f"{floor / fast:.1%} | {capture:.2f} |", flush=True)
    if args.profile:
        print(f"\nProfile at {size} px, batch {batch}; the floor is {floor * 1e3:.3f} ms per "
              "image")
        kernel_table("CUDA graph", runs[1], args.profile)
        kernel_table("eager", runs[0], args.profile)


if __name__ == "__main__":
    main()
