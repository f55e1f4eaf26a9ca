"""Early stopping: how many iterations a relative tolerance saves, and what it costs.

For each content x style pair of the image folder (default: ../shared/data/images, the
photos boston and tubingen with the paintings starry_night and the_scream), one full run at
the default parameters records the loss every iteration and keeps every intermediate image.
Each (tol, window) is then replayed on that trace with EarlyStop's rule: the iteration where
it would stop, its objective against the full run's final one, the seconds saved at the run's
own s/it, and how far its image is from the final one (mean absolute difference, 0-255).
With --check TOLxWINDOW, the setting is instead run for real against the full run, taking
turns, on the pairs of --contents (stop iteration, seconds, final objective, image difference).
With --quality JSON (from bench_quality --json, its last run a full one with --tol 0), the
settings are replayed on that run's curves against its first run, the reference: where each
would stop, its objective and seconds as fractions of the reference's, with no new run.

Usage: python -m bench.bench_tol [--images DIR] [--size 512] [--iterations 500]
[--tols 0.0005,0.001,0.002,0.005,0.01] [--windows 20,50,100]
[--check 0.005x50 --contents tubingen --figure docs/early-stop.jpg] [--quality q512.json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import time
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline import Runtime, StyleParams
from pipeline.api import StyleJob, prepare, stylize_prepared

from .arguments import parser

PHOTOS, PAINTINGS = ("boston", "tubingen"), ("starry_night", "the_scream")


def stop_at(totals: list[float], tol: float, window: int) -> int:
    """Steps taken under EarlyStop's rule, given the loss before each step."""
    lowest = list(itertools.accumulate(totals, min))
    for i in range(window, len(totals)):
        if lowest[i - window] - lowest[i] < tol * abs(lowest[i - window]):
            return i + 1
    return len(totals)


def full_run(job: StyleJob, params: StyleParams, runtime: Runtime
             ) -> tuple[list[float], dict[int, np.ndarray], float, float]:
    """Loss before each step, the image after each step, seconds, final objective (fp32)."""
    images: dict[int, np.ndarray] = {}
    (result,) = stylize_prepared([prepare(job, params)], params.replace(save_every=1), runtime,
                                 trace_every=1,
                                 save_image=lambda it, _, img: images.__setitem__(
                                     it, np.asarray(img, dtype=np.float32)))
    images[params.iterations] = np.asarray(result.image, dtype=np.float32)
    totals = [p["total"] for p in result.trace if p["iteration"] < params.iterations]
    return totals, images, result.seconds, result.losses["total"]


def check(args: argparse.Namespace, params: StyleParams, runtime: Runtime,
          pairs: list[tuple[str, str]]) -> None:
    """The setting for real against the full run, taking turns per pair: iterations, seconds,
    final objective (fp32) and image difference; the first pair's two images side by side."""
    tol, window = args.check.split("x")
    checked = params.replace(tol=float(tol), tol_window=int(window))
    print(f"tol {tol}, window {window}, for real:\n| pair | iterations | seconds / full's | "
          "objective / full's | image diff (0-255) |\n|---|---|---|---|---|")
    for n, (content, style) in enumerate(pairs):
        job = StyleJob(args.images / f"{content}.jpg", [args.images / f"{style}.jpg"])
        results = []
        for p in (params, checked):
            start = time.perf_counter()
            (result,) = stylize_prepared([prepare(job, p)], p, runtime)
            results.append((result, time.perf_counter() - start))
        (full, t_full), (early, t_early) = results
        diff = np.abs(np.asarray(full.image, np.float32) - np.asarray(early.image, np.float32))
        print(f"| {content} x {style} | {early.iterations} | {t_early / t_full:.2f} | "
              f"{early.losses['total'] / full.losses['total']:.4f} | {diff.mean():.2f} |",
              flush=True)
        if n == 0 and args.figure:
            side = Image.new("RGB", (full.image.width * 2 + 8, full.image.height), "white")
            side.paste(full.image, (0, 0))
            side.paste(early.image, (full.image.width + 8, 0))
            side.save(args.figure, quality=90)


def replay_quality(path: Path, tols: list[float], windows: list[int]) -> None:
    """Each setting on the last run's curve of a bench_quality --json file, against its
    reference (the first run): both objectives are the curves' (the optimizer's precision,
    before each step), the reference's its lowest; seconds are the curve's own."""
    results = json.loads(path.read_text())
    print(f"{path}: the last run replayed against the first, per pair: stop iteration, "
          "objective / reference's, seconds / reference's\n\n| tol | window | "
          + " | ".join(p.replace(":", " x ") for p in results)
          + " | worst objective | median seconds |\n|---|---|"
          + "---|" * len(results) + "---|---|")
    for tol, window in itertools.product(tols, windows):
        cells, ratios, seconds = [], [], []
        for runs in results.values():
            reference, *_, full = runs.values()
            totals = [v for _, v in full["curve"]]
            k = stop_at(totals, tol, window)
            after = min(k, len(totals) - 1)  # the loss after k steps: the curve's next point
            ratios.append(totals[after] / min(v for _, v in reference["curve"]))
            seconds.append(full["curve"][after][0] / reference["seconds"])
            cells.append(f"{k}: {ratios[-1]:.4f}, {seconds[-1]:.2f}")
        print(f"| {tol:g} | {window} | " + " | ".join(cells)
              + f" | {max(ratios):.4f} | {statistics.median(seconds):.2f} |")


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--images", type=Path, default=Path("../shared/data/images"))
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--iterations", type=int, default=500)
    ap.add_argument("--tols", default="0.0005,0.001,0.002,0.005,0.01")
    ap.add_argument("--windows", default="20,50,100")
    ap.add_argument("--check", default="", help="TOLxWINDOW: only run every pair with it, "
                    "to compare with the replay's stop iterations and objectives")
    ap.add_argument("--contents", default=",".join(PHOTOS), help="with --check: these photos")
    ap.add_argument("--figure", type=Path, help="with --check: the first pair's full and early "
                    "stopped images side by side, saved here")
    ap.add_argument("--quality", type=Path, help="replay the settings on this bench_quality "
                    "--json file's last run, against its first, instead of running")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    tols, windows = [float(t) for t in args.tols.split(",")], [int(w) for w in
                                                                args.windows.split(",")]
    if args.quality:
        replay_quality(args.quality, tols, windows)
        return
    missing = [f"{name}.jpg" for name in (*PHOTOS, *PAINTINGS)
               if not (args.images / f"{name}.jpg").is_file()]
    if missing:
        raise SystemExit(f"{args.images}: missing {', '.join(missing)} (--images DIR)")
    runtime = Runtime.start(args.device)
    params = StyleParams(size=args.size, iterations=args.iterations, tol=0.0)  # the full run
    pairs = [(c, s) for c, s in itertools.product(PHOTOS, PAINTINGS)]
    print(f"device {runtime.device} {runtime.precision}; {args.size} px, {args.iterations} "
          f"iterations, default weights")
    if args.check:
        contents = args.contents.split(",")
        check(args, params, runtime, [(c, s) for c, s in pairs if c in contents])
        return
    runs = {}
    for content, style in pairs:
        job = StyleJob(args.images / f"{content}.jpg", [args.images / f"{style}.jpg"])
        totals, images, seconds, final = full_run(job, params, runtime)
        runs[content, style] = (totals, images, seconds, final, job)
        print(f"{content} x {style}: {seconds:.1f} s, {seconds / args.iterations:.3f} s/it, "
              f"final objective {final:.5g}", flush=True)
    print("\n| tol | window | pair | stops at | objective / full | seconds saved | "
          "image diff (0-255) |\n|---|---|---|---|---|---|---|")
    summary = []
    for tol, window in itertools.product(tols, windows):
        ratios, saved = [], []
        for (content, style), (totals, images, seconds, _, _) in runs.items():
            k = stop_at(totals, tol, window)
            # The loss after k steps: the trace's next point (the last: the full run's).
            objective = totals[k] if k < len(totals) else totals[-1]
            ratio = objective / totals[-1]
            diff = float(np.abs(images[k] - images[args.iterations]).mean())
            ratios.append(ratio)
            saved.append((args.iterations - k) / args.iterations)
            print(f"| {tol:g} | {window} | {content} x {style} | {k} | {ratio:.4f} | "
                  f"{(args.iterations - k) * seconds / args.iterations:.0f} s "
                  f"({saved[-1]:.0%}) | {diff:.2f} |")
        summary.append((tol, window, max(ratios), statistics.median(saved), min(saved)))
    print("\n| tol | window | worst objective / full | median saved | worst saved |\n"
          "|---|---|---|---|---|")
    for tol, window, worst, median, least in summary:
        print(f"| {tol:g} | {window} | {worst:.4f} | {median:.0%} | {least:.0%} |")


if __name__ == "__main__":
    main()
