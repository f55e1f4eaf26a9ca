"""Winograd against direct convolutions on this CPU (fp32): each VGG19 conv layer forward and
backward to the input, then the whole objective and gradient of an iteration with `--winograd
off`, `auto` (the plan the probe measures), that plan before its whole-pass check (a fresh
per-layer measurement) and `on`.

Usage: python -m bench.bench_winograd [--size 256] [--threads 1] [--reps 7]

`--threads 1` is what a CPU worker or a batch's shard runs on (bulk runs); the process's
thread count is what a single `pipeline stylize` runs on. The variants take turns rep by rep
and each keeps its median, so ratios compare timings taken seconds apart.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable

import torch

from pipeline import Runtime, StyleParams
from pipeline.accel import winograd
from pipeline.accel.machine import cpu_model
from pipeline.gatys.engine import Objective, evaluate_and_backward, trunk_for
from pipeline.gatys.layers import CONV_NAMES, feature_shape
from pipeline.io.pixels import SizedImage
from pipeline.targets.builder import TargetBuilder, torch_features
from pipeline.targets.cache import TargetCache

from .arguments import parser
from .bench_batch import timed_call


def medians(calls: dict[str, Callable[[], object]], reps: int) -> dict[str, float]:
    """Median seconds of each call, taking turns; one warm-up round first."""
    times: dict[str, list[float]] = {k: [] for k in calls}
    for rep in range(reps + 1):
        for key, call in calls.items():
            t = timed_call(torch.device("cpu"), call)
            if rep:
                times[key].append(t)
    return {k: statistics.median(v) for k, v in times.items()}


def layers_table(h: int, w: int, reps: int) -> None:
    runtime = Runtime.start("cpu", "fp32", channels_last=False, winograd=True)
    trunk = runtime.compute_trunk(trunk_for(StyleParams(), runtime)[0])
    print("| layer | input | direct fwd ms | Winograd fwd ms | fwd ratio | direct bwd ms | "
          "Winograd bwd ms | bwd ratio |")
    print("|---|---|---|---|---|---|---|---|")
    totals = dict.fromkeys(("direct", "winograd", "direct back", "winograd back"), 0.0)
    gen = torch.Generator().manual_seed(0)
    for name in CONV_NAMES[: CONV_NAMES.index("conv5_1") + 1]:
        conv = trunk.layers[name]
        t = medians(winograd.layer_calls(conv, name, h, w, gen), reps)
        _, lh, lw = feature_shape(name, h, w)
        for k in totals:
            totals[k] += t[k]
        print(f"| {name} | {conv.in_channels}x{lh}x{lw} | "
              f"{t['direct'] * 1e3:.1f} | {t['winograd'] * 1e3:.1f} | "
              f"{t['direct'] / t['winograd']:.2f}x | {t['direct back'] * 1e3:.1f} | "
              f"{t['winograd back'] * 1e3:.1f} | {t['direct back'] / t['winograd back']:.2f}x |",
              flush=True)
    print(f"| all | | {totals['direct'] * 1e3:.0f} | {totals['winograd'] * 1e3:.0f} | "
          f"{totals['direct'] / totals['winograd']:.2f}x | {totals['direct back'] * 1e3:.0f} | "
          f"{totals['winograd back'] * 1e3:.0f} | "
          f"{totals['direct back'] / totals['winograd back']:.2f}x |\n")


# auto as it was before the whole-pass check: every layer measured faster alone.
UNCHECKED = "auto, the per-layer plan unchecked"


def iteration_table(h: int, w: int, reps: int) -> None:
    """The objective and its gradient, as an iteration evaluates them (default parameters)."""
    params = StyleParams(size=max(h, w))
    gen = torch.Generator().manual_seed(0)
    content = SizedImage(torch.rand(3, h, w, generator=gen) * 255, "content", "content")
    style = SizedImage(torch.rand(3, h, w, generator=gen) * 255, "style", "style")
    base = Runtime.start("cpu", "fp32", channels_last=False, winograd=False)
    trunk = trunk_for(params, base)[0]
    targets = TargetBuilder(torch_features(trunk), {"backend": "torch"},
                            TargetCache(None)).batch([content], [[style]], params)
    x = content.pixels[None]
    calls = {}
    for word, asked in (("off", False), ("auto", None), (UNCHECKED, None), ("on", True)):
        runtime = Runtime.start("cpu", "fp32", channels_last=False, winograd=asked)
        objective = Objective(trunk, targets, params, runtime)
        if word == UNCHECKED:  # a plan of its own, measured at its first call, not cached
            objective.net = winograd.winograd_trunk(trunk, False, None)
            objective.net.layers["conv1_1"].plan.measure = winograd.measure_layers
        calls[word] = lambda o=objective: evaluate_and_backward(o, x.clone().requires_grad_())
    t = medians(calls, reps)
    print("| --winograd | s per objective + gradient | vs off |")
    print("|---|---|---|")
    for word, s in t.items():
        print(f"| {word} | {s:.3f} | {t['off'] / s:.2f}x |")


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--size", type=int, default=256, help="longest side; 4:3 landscape")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=7)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if not winograd.available():
        raise SystemExit("NNPACK does not run on this CPU: no Winograd convolutions here")
    h, w = round(args.size * 3 / 4), args.size
    print(f"{cpu_model()}, {args.threads} thread(s), {w}x{h} px, fp32; medians of {args.reps}, "
          "taking turns\n")
    layers_table(h, w, args.reps)
    iteration_table(h, w, args.reps)


if __name__ == "__main__":
    main()
