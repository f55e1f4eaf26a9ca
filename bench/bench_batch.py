"""Throughput per image against batch size, including L-BFGS's full-history steady state.

Usage: python -m bench.bench_batch [--sizes 256,512] [--batches 1,2,4,8] [--unsplit 4]
[--other-side 1] [--iterations 110] [--device cpu] [--precision auto].

This machine's speed drifts by up to 2x over minutes (identical matmul loops differ by 30%
within one minute), so the batch sizes are not run one after another: one optimization per
batch size is set up, and they take turns, one iteration each. Every ratio then compares
iterations taken seconds apart. An iteration's cost grows with the L-BFGS history (two passes
over up to 100 stored pairs), so the runs go past the point where it is full: "early" is
iterations 4..12, "steady" the last 10. A 500-iteration run is estimated as the measured
iterations plus (500 - iterations) steady ones. The steady time is also split into the
objective (trunk forward, losses, backward: the part batching can speed up) and the L-BFGS
step (per-sample products over the history, which do not batch on the CPU). On the CPU a
batch runs as one shard per core (cpu_shards.py); `--unsplit` adds rows for batch sizes run
as one shard whose ops are split over the cores (`--no-split-batches`), the way before;
`--other-side` rows with L-BFGS's history as the other factor of its products than the one
the machine's probe chose (history_probe.py).
The last column counts the process's minor page faults per steady iteration: memory the
allocator handed back and took again (cpu_heap.py keeps it).
"""

from __future__ import annotations

import dataclasses
import resource
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from pipeline import Runtime, StyleJob, StyleParams
from pipeline.accel.cpu_shards import ShardedRun
from pipeline.accel.cuda_graph import GraphedRun
from pipeline.api import prepare, setup_batch
from pipeline.gatys.engine import Run
from pipeline.io.examples import landscape, swirls

from .arguments import parser

RUN_LENGTH = 500  # iterations of the run that images/hour is quoted for



def start_run(batch: int, params: StyleParams, runtime: Runtime) -> Run:
    jobs = [StyleJob(landscape(), [swirls(seed=i)]) for i in range(batch)]
    problem = setup_batch([prepare(job, params) for job in jobs], params, runtime)
    return runtime.start_run(problem.trunk, problem.x0, problem.stages[0], 0, None, params)


def timed_call(device: torch.device, fn: Callable[[], Any]) -> float:
    """Seconds of fn(), with the device's queued work finished before and after."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t


def timed_step(run: Run) -> float:
    return timed_call(run.x.device, run.step)


def interleaved_seconds(runs: list[Run], iterations: int) -> list[list[float]]:
    """seconds[k][i]: iteration i of runs[k], per image. The runs take turns, one iteration
    each, so every ratio between them compares iterations taken seconds apart."""
    seconds: list[list[float]] = [[] for _ in runs]
    for _ in range(iterations):
        for run, per_image in zip(runs, seconds, strict=True):
            per_image.append(timed_step(run) / run.x.shape[0])
    return seconds


def time_objective(run: Run) -> list[float]:
    """From now on, the seconds of each of `run`'s objective evaluations (trunk, losses,
    backward) are appended to the returned list, one per shard per step (the shards of a
    sharded run evaluate side by side, so one shard's seconds are the batch's); the rest of a
    step is the optimizer's. A run replaying whole iterations as a CUDA graph never calls
    its closure (and a timer's host sync cannot be captured): its list stays empty."""
    seconds: list[float] = []
    if isinstance(run, GraphedRun) and run.graphed is None:
        return seconds
    for shard in run.shards if isinstance(run, ShardedRun) else [run]:
        def timed(closure=shard.closure, device=shard.x.device) -> dict[str, torch.Tensor]:
            out: dict[str, torch.Tensor] = {}
            seconds.append(timed_call(device, lambda: out.update(closure())))
            return out

        shard.closure = timed  # type: ignore[method-assign]
    return seconds


def count_page_faults(run: Run) -> list[int]:
    """From now on, the minor page faults of the process during each of `run`'s steps (any
    thread's: the shards allocate on their own)."""
    faults: list[int] = []
    step = run.step

    def counted() -> dict[str, torch.Tensor]:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        try:
            return step()
        finally:
            faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)

    run.step = counted  # type: ignore[method-assign]
    return faults


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--sizes", default="256,512")
    ap.add_argument("--batches", default="1,2,4,8")
    ap.add_argument("--unsplit", default="4",
                    help="batch sizes also run unsplit (CPU; empty for none)")
    ap.add_argument("--other-side", default="1",
                    help="batch sizes also run with the L-BFGS history as the factor the probe "
                         "did not choose (CPU; empty for none)")
    ap.add_argument("--iterations", type=int, default=110,
                    help="iterations per run; past lbfgs_history (100) + 10 for 'steady'")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="auto")
    args = ap.parse_args()
    runtime = Runtime.start(args.device, args.precision)
    unsplit = dataclasses.replace(runtime, split_batches=False)
    configs = [(int(b), runtime) for b in args.batches.split(",")]
    if runtime.split_batches:
        configs += [(int(b), unsplit) for b in args.unsplit.split(",") if b]
    if runtime.device.type == "cpu":
        other = dataclasses.replace(runtime, history_left=not runtime.history_left)
        configs += [(int(b), other) for b in args.other_side.split(",") if b]
    print(f"{runtime.device} {runtime.precision}, landscape 4:3, {args.iterations} iterations "
          f"per run, batch sizes interleaved iteration by iteration; s/iteration per image\n")
    print("| size | batch | early (it 4-12) | steady (history full) | steady: objective + "
          f"L-BFGS | images/hour, {RUN_LENGTH}-it run | vs batch 1 | objective vs batch 1 "
          "| page faults / it, steady |")
    print("|---|---|---|---|---|---|---|---|---|")
    for size in (int(s) for s in args.sizes.split(",")):
        params = StyleParams(size=size, iterations=args.iterations)
        runs = [start_run(b, params, rt) for b, rt in configs]
        shards = [len(run.shards) if isinstance(run, ShardedRun) else 1 for run in runs]
        objective = [time_objective(run) for run in runs]
        faults = [count_page_faults(run) for run in runs]
        seconds = interleaved_seconds(runs, args.iterations)
        del runs
        steady = [statistics.median(per_image[-10:]) for per_image in seconds]
        steady_obj = [statistics.median(obj[-10 * k:]) / b if obj else None
                      for obj, k, (b, _) in zip(objective, shards, configs, strict=True)]
        totals = [sum(per_image) + st * (RUN_LENGTH - len(per_image))
                  for per_image, st in zip(seconds, steady, strict=True)]
        for (b, rt), k, per_image, st, obj, total, flt in zip(
                configs, shards, seconds, steady, steady_obj, totals, faults, strict=True):
            label = f"{b}" + (f" ({k} shards)" if k > 1 else
                              ", one shard" if b > 1 and rt.device.type == "cpu" else "")
            if rt.history_left != runtime.history_left:
                label += f", history {'left' if rt.history_left else 'right'} (not chosen)"
            split, vs = ("one graph", "-") if obj is None or steady_obj[0] is None else (
                f"{obj:.4g} + {st - obj:.4g}", f"{steady_obj[0] / obj:.2f}x")
            print(f"| {size} | {label} | {statistics.median(per_image[3:12]):.4g} | {st:.4g} | "
                  f"{split} | {3600 / total:.1f} | {totals[0] / total:.2f}x "
                  f"| {vs} | {statistics.median(flt[-10:]):.0f} |", flush=True)


if __name__ == "__main__":
    main()
