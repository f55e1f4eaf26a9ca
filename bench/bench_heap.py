"""Keeping freed CPU memory (Runtime.keep_cpu_memory) against glibc's default, per size and batch.

Usage: python -m bench.bench_heap [--cases 256x1,256x4,512x1] [--blocks 5] [--precision auto].

Both allocators are timed on one optimization in one process, switching every 4 iterations
(the first after a switch is not timed: it is the one that fills or trims the heap), so the
machine's drift falls on both alike. Page faults and kernel time come from getrusage.
"""

from __future__ import annotations

import resource
import statistics
import time

from pipeline import Runtime, StyleParams
from pipeline.accel import cpu_heap

from .arguments import parser
from .bench_batch import start_run

TIMED = 3  # iterations timed per block


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--cases", default="256x1,256x4,512x1", help="size x batch, comma-separated")
    ap.add_argument("--blocks", type=int, default=5, help="blocks of each allocator per case")
    ap.add_argument("--precision", default="auto")
    args = ap.parse_args()
    runtime = Runtime.start("cpu", args.precision)
    if not runtime.keep_cpu_memory:
        raise SystemExit("not glibc: there is no other allocator setting to compare")
    print(f"cpu {runtime.precision}, L-BFGS from iteration 1, {args.blocks} blocks of {TIMED} "
          "timed iterations per allocator; medians per iteration\n")
    print("| size | batch | allocator | s/it per image | page faults | kernel s/it per image "
          "| default / kept |")
    print("|---|---|---|---|---|---|---|")
    for case in args.cases.split(","):
        size, batch = (int(v) for v in case.split("x"))
        run = start_run(batch, StyleParams(size=size, iterations=1000), runtime)
        seconds: dict[bool, list[float]] = {False: [], True: []}
        faults: dict[bool, list[int]] = {False: [], True: []}
        kernel: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(args.blocks):
            for keep in (False, True):
                cpu_heap.keep_freed_memory(keep)
                run.step()
                for _ in range(TIMED):
                    before, t = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
                    run.step()
                    seconds[keep].append((time.perf_counter() - t) / batch)
                    after = resource.getrusage(resource.RUSAGE_SELF)
                    faults[keep].append(after.ru_minflt - before.ru_minflt)
                    kernel[keep].append((after.ru_stime - before.ru_stime) / batch)
        cpu_heap.keep_freed_memory(True)
        median = {keep: statistics.median(s) for keep, s in seconds.items()}
        for keep, name in ((False, "glibc default"), (True, "kept (default)")):
            print(f"| {size} | {batch} | {name} | {median[keep]:.3f} | "
                  f"{statistics.median(faults[keep]):.0f} | "
                  f"{statistics.median(kernel[keep]):.3f} | "
                  f"{median[False] / median[keep]:.2f}x |", flush=True)
        del run


if __name__ == "__main__":
    main()
