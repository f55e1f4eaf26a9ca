"""Coarse-to-fine against full-size-only: the full-size objective against seconds, one process.

Each run records (seconds since the optimization started, full-size objective) at every
full-size iteration; the coarse stages have no full-size objective, so a coarse-to-fine curve
starts when its last stage does. Prints the objective at fractions of the baseline's time and
the seconds each run needs to reach the baseline's final objective.

Usage: python -m bench.bench_schedule [--size 256] [--runs 1x200,2x200,2x300,2x400]
[--device cpu]; a run is SCALESxITERATIONS, the first is the baseline (on a GPU machine:
--device cuda --size 512 --runs 1x500,2x500,3x500,2x800)
"""

from __future__ import annotations

import bisect
import time

from pipeline import Runtime, StyleJob, StyleParams, stylize_batch
from pipeline.io.examples import landscape, swirls

from .arguments import parser


def curve(job: StyleJob, params: StyleParams, runtime: Runtime
          ) -> tuple[list[tuple[float, float]], float, float]:
    """[(seconds, objective)] at full-size iterations, total seconds, final objective (fp32)."""
    ends = params.stage_ends(len(params.scale_sizes()))  # the demo images fit every size
    full_from = ends[-2] if len(ends) > 1 else 0
    points: list[tuple[float, float]] = []
    start = time.perf_counter()

    def progress(i: int, terms: dict) -> None:
        if i > full_from:
            points.append((time.perf_counter() - start, terms["total"][0].item()))

    (result,) = stylize_batch([job], params, runtime, progress)
    return points, result.seconds, result.losses["total"]


def reach(points: list[tuple[float, float]], objective: float) -> float | None:
    """Seconds at which the running minimum of the curve first gets to `objective`."""
    best = float("inf")
    for t, value in points:
        best = min(best, value)
        if best <= objective:
            return t
    return None


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--runs", default="1x200,2x200,2x300,2x400")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    runtime = Runtime.start(args.device)
    job = StyleJob(landscape(), [swirls()])
    runs = []
    for run in args.runs.split(","):
        scales, iterations = map(int, run.split("x"))
        params = StyleParams(size=args.size, iterations=iterations, scales=scales, tol=0.0)
        runs.append((params, *curve(job, params, runtime)))
    _, _, base_seconds, base_final = runs[0]
    fractions = (0.25, 0.5, 0.75, 1.0)
    print(f"{runtime.device} {runtime.precision}, {args.size} px landscape, L-BFGS, iterations "
          "split evenly over the sizes; objective = full-size total loss; baseline = first row\n")
    print("| sizes | iterations | seconds | final objective (fp32) | "
          + " | ".join(f"objective at {f:.0%} of baseline time" for f in fractions)
          + " | seconds to the baseline's final objective |")
    print("|---|---|---|---|" + "---|" * len(fractions) + "---|")
    for params, points, seconds, final in runs:
        times = [t for t, _ in points]
        at = []
        for f in fractions:
            k = bisect.bisect_right(times, f * base_seconds)
            before = "(coarse)" if params.scales > 1 else "(none yet)"  # no full-size point
            at.append(f"{min(v for _, v in points[:k]):.4g}" if k else before)
        hit = reach(points, base_final)
        sizes = " -> ".join(map(str, params.scale_sizes()))
        print(f"| {sizes} | {params.iterations} | {seconds:.1f} | {final:.4g} | "
              + " | ".join(at) + f" | {f'{hit:.1f}' if hit is not None else 'not reached'} |",
              flush=True)


if __name__ == "__main__":
    main()
