"""What a large run's report and status read, and what its loss curves cost: the ledger
(`ledger.read`, as `pipeline status` and `pipeline report` do), every job's trace
(`traces.read`) and each job's curve (`curves.loss_svg`).

Writes the ledger and traces a run of JOBS jobs leaves (parts of 32 jobs, as 4 slots at 8
batches a run write them; 41 points a job, as 400 iterations traced every 10 iterations
give; ledger rows of a default job), then times each step, `--rounds` times; medians. The
memory is what the read traces hold once read (tracemalloc, in a pass of its own: it slows
every allocation).

Usage: python -m bench.bench_report [--jobs 100000] [--rounds 3]
"""

from __future__ import annotations

import hashlib
import random
import statistics
import tempfile
import time
import tracemalloc
from pathlib import Path

from pipeline.bulk import ledger, traces
from pipeline.gatys.params import StyleParams
from pipeline.gatys.trace import TERMS
from pipeline.report.curves import loss_svg

from .arguments import parser

PART_JOBS, POINTS = 32, 41


def write_run_parts(out: Path, jobs: int) -> None:
    rnd = random.Random(0)
    params = StyleParams().to_dict()
    for first in range(0, jobs, PART_JOBS):
        part, rows = {}, []
        for job in range(first, min(first + PART_JOBS, jobs)):
            key = hashlib.sha256(str(job).encode()).hexdigest()
            start = {t: 10 ** rnd.uniform(3, 8) for t in TERMS}
            part[key] = [{"iteration": 10 * i, "stage": 0,
                          **{t: v / (1 + i * rnd.uniform(0.1, 1)) for t, v in start.items()}}
                         for i in range(POINTS)]
            rows.append(ledger.make_row(
                key, job, ledger.DONE, 0.0, content=f"photos/p{job // 10:06d}.jpg",
                styles=[f"styles/s{job % 10}.jpg"], output=f"p{job // 10:06d}__s{job % 10}.png",
                params=params, device="cuda:0", losses=part[key][-1], iterations=400,
                seconds=1.0, precision="bf16"))
        traces.append(out, part)
        ledger.append(out, rows)


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--jobs", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-report-") as tmp:
        out = Path(tmp)
        write_run_parts(out, args.jobs)
        tracemalloc.start()
        held = traces.read(out)
        memory = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        del held
        ledgers, reads, curves = [], [], []
        for _ in range(args.rounds):
            started = time.perf_counter()
            ledger.read(out)
            ledgers.append(time.perf_counter() - started)
            started = time.perf_counter()
            found = traces.read(out)
            reads.append(time.perf_counter() - started)
            started = time.perf_counter()
            size = sum(len(loss_svg(trace)) for trace in found.values())
            curves.append(time.perf_counter() - started)
    print(f"{len(found)} jobs, {POINTS} points each, in {-(-args.jobs // PART_JOBS)} parts")
    print(f"ledger: {statistics.median(ledgers):.2f} s")
    print(f"traces: {statistics.median(reads):.2f} s, holding {memory / 2**20:.0f} MiB "
          f"({memory / len(found) / POINTS:.0f} bytes a point)")
    print(f"curves: {statistics.median(curves):.2f} s, {size / len(found):.0f} bytes a curve")


if __name__ == "__main__":
    main()
