"""The Gram lever: whole L-BFGS iterations with the Gram GEMMs in the trunk's dtype (the
default: bf16 on AMX or tensor cores, the target subtracted in the fp32 accumulator) against
the same run with them in fp32 (the features cast to fp32 first, as before this lever).

Usage: python -m bench.bench_gram [--size 256] [--batches 1,4] [--iterations 60]
[--device cpu] [--precision auto].

For each batch size, two runs of the same batch from the same start take turns, one iteration
each, so the ratio compares timings taken seconds apart. Both runs' images are then scored with
one fp32 NCHW objective (as `engine.optimize` reports a run's). With `--precision fp32` the
two runs are the same computation.
"""

from __future__ import annotations

import contextlib
import statistics
from collections.abc import Iterator

import torch

from pipeline import Runtime, StyleParams
from pipeline.gatys import losses

from .arguments import parser
from .bench_batch import start_run, timed_step

default_gram_mse = losses.gram_mse


@contextlib.contextmanager
def fp32_grams() -> Iterator[None]:
    """loss_terms looks gram_mse up at call time; feed it fp32 features for the duration."""
    losses.gram_mse = lambda features, target, guides=None: default_gram_mse(
        features.float(), target, guides)
    try:
        yield
    finally:
        losses.gram_mse = default_gram_mse


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batches", default="1,4")
    ap.add_argument("--iterations", type=int, default=60)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="auto")
    args = ap.parse_args()
    runtime = Runtime.start(args.device, args.precision)
    # unsplit: the scoring objective takes the whole batch at once
    exact = Runtime.start(args.device, "fp32", channels_last=False, split_batches=False)
    params = StyleParams(size=args.size, iterations=args.iterations)
    print(f"{runtime.device} {runtime.precision}, {args.size} px landscape, L-BFGS, "
          f"{args.iterations} iterations, runs interleaved; median s/iteration per image over "
          "iterations 4..end\n")
    print("| batch | Grams fp32 | Grams in trunk dtype (default) | speed-up | final objective "
          "(default vs fp32 Grams) |")
    print("|---|---|---|---|---|")
    for batch in (int(b) for b in args.batches.split(",")):
        # Start the fp32 run inside the swap too: with CUDA graphs its objective is captured
        # at the start, and the capture keeps whichever gram_mse was in place then.
        with fp32_grams():
            fp32_run = start_run(batch, params, runtime)
        default_run = start_run(batch, params, runtime)
        fp32_s: list[float] = []
        default_s: list[float] = []
        for _ in range(args.iterations):
            with fp32_grams():
                fp32_s.append(timed_step(fp32_run) / batch)
            default_s.append(timed_step(default_run) / batch)
        score = start_run(batch, params, exact).evaluate  # same jobs, fp32 NCHW objective
        with torch.no_grad():
            scores = [score(run.x.detach())["total"].sum().item()
                      for run in (fp32_run, default_run)]
        slow, fast = statistics.median(fp32_s[3:]), statistics.median(default_s[3:])
        print(f"| {batch} | {slow:.4g} | {fast:.4g} | {slow / fast:.2f}x | "
              f"{scores[1] / scores[0]:.4f} |", flush=True)


if __name__ == "__main__":
    main()
