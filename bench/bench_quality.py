"""Time to quality: seconds until each setting reaches the reference run's objective.

For each content x style pair of the image folder (default: ../shared/data/images: the photos
boston and tubingen with the paintings starry_night and the_scream), every run of --runs is
timed from its targets to its last iteration (the targets' cache off: a new photo's targets
are part of its cost), taking turns per pair. Its curve is the full-size objective (the loss
the optimizer sees, before each step) against those seconds; the coarse stages of a
coarse-to-fine run have no full-size objective, so its curve starts with its last stage. The
first run is the reference: the table gives each run's final objective (re-evaluated in fp32)
and wall time against it, and the seconds at which the curve first gets within 0.5% of the
reference's final objective. --json keeps the curves for --figure (objective vs seconds) and
--sides (reference and the last run side by side, per pair).

Usage: python -m bench.bench_quality [--images DIR] [--size 512]
[--runs 'reference=iterations:500,tol:0,...;default='] [--pairs boston:starry_night,...]
[--json bench-out/quality-512.json] [--figure docs/time-to-quality.png] [--sides docs/]
A run is NAME=FIELD:VALUE,... over the default StyleParams (empty: the default itself).
"""

from __future__ import annotations

import itertools
import json
import statistics
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

from PIL import Image

from bench.bench_schedule import reach
from pipeline import Runtime, StyleParams
from pipeline.api import StyleJob, prepare, setup_batch
from pipeline.gatys.engine import optimize
from pipeline.io.pixels import to_image

from .arguments import parser

PHOTOS, PAINTINGS = ("boston", "tubingen"), ("starry_night", "the_scream")
WITHIN = 0.005  # "the same objective": within 0.5% of the reference's
TYPES = {f.name: f.type for f in fields(StyleParams)}
# The default of earlier versions, run to the end: 500 plain L-BFGS iterations, no early stop
REFERENCE = ("reference=iterations:500,tol:0,lbfgs_precondition:0,lbfgs_scaling:standard")


def parse_run(text: str, size: int) -> tuple[str, StyleParams, str]:
    """NAME=FIELD:VALUE,... -> (name, the default StyleParams at `size` with those changes,
    the precision: FIELD `precision` is the runtime's, default auto)."""
    name, _, changes = text.partition("=")
    values: dict[str, Any] = {}
    precision = "auto"
    for change in filter(None, changes.split(",")):
        key, _, value = change.partition(":")
        if key == "precision":
            precision = value
            continue
        kind = TYPES[key]
        values[key] = (float(value) if "float" in kind else int(value) if "int" in kind
                       else value.lower() in ("1", "true") if "bool" in kind else value)
    return name, StyleParams(size=size).replace(**values), precision


def timed_run(job: StyleJob, params: StyleParams, runtime: Runtime) -> dict[str, Any]:
    """One run from decoded images: curve [(seconds, full-size objective)], seconds, final
    objective (fp32), iterations taken, and the image."""
    prepared = [prepare(job, params)]
    points: list[tuple[float, float]] = []
    start = time.perf_counter()
    problem = setup_batch(prepared, params, runtime)
    full_from = problem.stages[-2].end if len(problem.stages) > 1 else 0

    def progress(i: int, terms: dict) -> None:
        if i > full_from:
            points.append((time.perf_counter() - start, terms["total"][0].item()))

    result = optimize(problem.trunk, problem.x0, problem.stages, params, runtime, progress)
    seconds = time.perf_counter() - start
    return {"curve": points, "seconds": seconds, "final": result.terms["total"][0].item(),
            "iterations": result.iterations[0], "image": to_image(result.images[0])}


def figure(results: dict[str, dict[str, dict[str, Any]]], path: Path, size: int) -> None:
    """Objective / reference's final against seconds / reference's, one panel per pair."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = list(results)
    fig, axes = plt.subplots(1, len(pairs), figsize=(4 * len(pairs), 3.4), squeeze=False)
    for ax, pair in zip(axes[0], pairs, strict=True):
        runs = results[pair]
        ref = next(iter(runs.values()))
        for name, run in runs.items():
            ts = [t / ref["seconds"] for t, _ in run["curve"]]
            vs = [v / ref["final"] for _, v in run["curve"]]
            ax.plot(ts, vs, label=name, lw=1.2)
        ax.axhline(1 + WITHIN, color="gray", lw=0.8, ls="--")
        ax.axvline(0.5, color="gray", lw=0.8, ls=":")
        ax.set_ylim(0.98, 1.25)
        ax.set_xlim(0, 1.05)
        ax.set_title(pair.replace(":", " x "), fontsize=10)
        ax.set_xlabel("seconds / reference's")
    axes[0][0].set_ylabel("objective / reference's final")
    axes[0][-1].legend(fontsize=8)
    fig.suptitle(f"{size} px, full-size objective; dashed: +0.5%, dotted: half the time",
                 fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--images", type=Path, default=Path("../shared/data/images"))
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--runs", default=REFERENCE + ";default=")
    ap.add_argument("--pairs", default=",".join(f"{c}:{s}" for c, s
                                                in itertools.product(PHOTOS, PAINTINGS)))
    ap.add_argument("--json", type=Path, help="keep every curve here (for --figure later)")
    ap.add_argument("--figure", type=Path, help="objective vs seconds, saved here")
    ap.add_argument("--sides", type=Path, help="folder: reference and last run side by side")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    runs = [parse_run(text, args.size) for text in args.runs.split(";")]
    pairs = [tuple(p.split(":")) for p in args.pairs.split(",")]
    missing = sorted({f"{n}.jpg" for p in pairs for n in p
                      if not (args.images / f"{n}.jpg").is_file()})
    if missing:
        raise SystemExit(f"{args.images}: missing {', '.join(missing)} (--images DIR)")
    runtimes = {p: Runtime.start(args.device, cache_targets=False, precision=p)
                for p in dict.fromkeys(p for _, _, p in runs)}
    runtime = runtimes[runs[0][2]]
    warm = StyleJob(args.images / f"{pairs[0][0]}.jpg", [args.images / f"{pairs[0][1]}.jpg"])
    timed_run(warm, StyleParams(size=128, iterations=2, tol=0.0), runtime)  # load, export
    print(f"{runtime.device} {runtime.precision}; {args.size} px; reference = {runs[0][0]}; "
          f"reached = first within {WITHIN:.1%} of the reference's final objective\n")
    print("| pair | run | iterations | seconds | / reference | objective / reference | "
          "reached at (s) | / reference |\n|---|---|---|---|---|---|---|---|")
    results: dict[str, dict[str, dict[str, Any]]] = {}
    for content, style in pairs:
        job = StyleJob(args.images / f"{content}.jpg", [args.images / f"{style}.jpg"])
        pair = f"{content}:{style}"
        results[pair] = {}
        for name, params, precision in runs:
            run = results[pair][name] = timed_run(job, params, runtimes[precision])
            ref = results[pair][runs[0][0]]
            hit = reach(run["curve"], ref["final"] * (1 + WITHIN))
            reached = "not reached | -" if hit is None else \
                f"{hit:.1f} | {hit / ref['seconds']:.2f}"
            print(f"| {content} x {style} | {name} | {run['iterations']} | "
                  f"{run['seconds']:.1f} | {run['seconds'] / ref['seconds']:.2f} | "
                  f"{run['final'] / ref['final']:.4f} | {reached} |", flush=True)
        if args.sides:
            ref, last = results[pair][runs[0][0]]["image"], results[pair][runs[-1][0]]["image"]
            side = Image.new("RGB", (ref.width * 2 + 8, ref.height), "white")
            side.paste(ref, (0, 0))
            side.paste(last, (ref.width + 8, 0))
            args.sides.mkdir(parents=True, exist_ok=True)
            side.save(args.sides / f"quality-{content}-{style}.jpg", quality=90)
    print("\n| run | worst objective / reference | median seconds / reference | worst |\n"
          "|---|---|---|---|")
    for name, _, _ in runs:
        obj = [results[p][name]["final"] / results[p][runs[0][0]]["final"] for p in results]
        sec = [results[p][name]["seconds"] / results[p][runs[0][0]]["seconds"] for p in results]
        print(f"| {name} | {max(obj):.4f} | {statistics.median(sec):.2f} | {max(sec):.2f} |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({p: {n: {k: v for k, v in r.items() if k != "image"}
                                             for n, r in rs.items()}
                                         for p, rs in results.items()}))
    if args.figure:
        figure(results, args.figure, args.size)


if __name__ == "__main__":
    main()
