"""The bf16 quality guard at full size: final objective (fp32) of bf16 against all-fp32 runs.

Usage: python -m bench.bench_precision [--size 512] [--iterations 500] [--every 100]
[--device cpu].

Three runs of the same job from the same start: fp32 NCHW (no levers), fp32 channels_last
(the same math reassociated: how far apart chaos alone puts two fp32 runs) and the default
bf16 channels_last. They take turns, one iteration each, so the seconds per iteration are
compared under the same machine load. Every `--every` iterations each run's images are scored
with one fp32 NCHW objective (as `engine.optimize` reports it).
"""

from __future__ import annotations

import torch

from pipeline import Runtime, StyleParams

from .arguments import parser
from .bench_batch import start_run, timed_step

VARIANTS = {  # name -> Runtime.start options
    "fp32 NCHW": {"precision": "fp32", "channels_last": False},
    "fp32 channels_last": {"precision": "fp32", "channels_last": True},
    "bf16 channels_last (default)": {"precision": "bf16", "channels_last": True},
}


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--iterations", type=int, default=500)
    ap.add_argument("--every", type=int, default=100)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    params = StyleParams(size=args.size, iterations=args.iterations)
    names = list(VARIANTS)
    runs = {name: start_run(1, params, Runtime.start(args.device, **options))
            for name, options in VARIANTS.items()}
    seconds = dict.fromkeys(names, 0.0)
    score = runs[names[0]].evaluate  # the fp32 NCHW run's objective scores them all
    print(f"{args.device}, {args.size} px landscape, L-BFGS, {args.iterations} iterations, "
          "runs interleaved; objective = fp32 NCHW total loss of each run's images\n")
    print("| iteration | " + " | ".join(f"{n}: objective (vs fp32 NCHW)" for n in names) + " |")
    print("|---|" + "---|" * len(names))
    final = {}
    for i in range(1, args.iterations + 1):
        for name, run in runs.items():
            seconds[name] += timed_step(run)
        if i % args.every == 0 or i == args.iterations:
            with torch.no_grad():
                final = {n: score(r.x.detach())["total"].item() for n, r in runs.items()}
            base = final[names[0]]
            print(f"| {i} | " + " | ".join(f"{final[n]:.4g} ({final[n] / base:.4f})"
                                           for n in names) + " |", flush=True)
    base_s = seconds[names[0]]
    print("\n| run | s/iteration | speed vs fp32 NCHW | final objective vs fp32 NCHW |")
    print("|---|---|---|---|")
    for n in names:
        print(f"| {n} | {seconds[n] / args.iterations:.4g} | {base_s / seconds[n]:.2f}x | "
              f"{final[n] / final[names[0]]:.4f} |")


if __name__ == "__main__":
    main()
