"""Where batching can gain on this device: each VGG19 conv layer's time per image at batch 1
and at batch N, in the trunk's precision and layout.

Usage: python -m bench.bench_layers [--size 256] [--batch 4] [--reps 9] [--device cpu]
[--precision auto].

Per layer: the convolution forward, its backward to the input (the weights are frozen), and
the ReLU backward after it (memory-bound: it reads two tensors and writes one of the
activation's size). Batch 1 and batch N take turns, rep by rep, and each keeps its median, so
the ratio compares timings taken seconds apart. A ratio above 1 means batch N does that work
faster per image.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable

import torch

from pipeline import Runtime, StyleParams
from pipeline.gatys.engine import trunk_for
from pipeline.gatys.layers import CONV_NAMES, LAYER_INDEX

from .arguments import parser
from .bench_batch import timed_call


def layer_ops(conv: torch.nn.Conv2d, shape: tuple[int, int, int, int], runtime: Runtime
              ) -> dict[str, Callable[[], object]]:
    """The three timed operations of one layer for inputs of `shape` [N, C, H, W], through the
    trunk's own module (the bf16 trunk's conv1_1 reads fp32 pixels and has its own backward)."""
    dtype = conv.weight.dtype
    x = runtime.layout(torch.rand(shape, device=runtime.device)).to(dtype).requires_grad_(True)
    y = conv(x)
    grad = torch.rand_like(y)
    return {
        "forward": lambda: conv(x),
        "backward": lambda: torch.autograd.grad(y, x, grad, retain_graph=True),
        "relu backward": lambda: torch.ops.aten.threshold_backward(grad, y, 0),
    }


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--size", type=int, default=256, help="longest side; 4:3 landscape")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--reps", type=int, default=9)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="auto")
    args = ap.parse_args()
    runtime = Runtime.start(args.device, args.precision)
    trunk = runtime.compute_trunk(trunk_for(StyleParams(), runtime)[0])
    h, w = round(args.size * 3 / 4), args.size
    print(f"{runtime.device} {runtime.precision}, {w}x{h} px input; ms per image, median of "
          f"{args.reps}, batch 1 and {args.batch} interleaved\n")
    print(f"| layer | input | op | batch 1 | batch {args.batch} | batch {args.batch} vs 1 |")
    print("|---|---|---|---|---|---|")
    totals = {1: 0.0, args.batch: 0.0}
    for name in CONV_NAMES[: CONV_NAMES.index("conv5_1") + 1]:
        conv = trunk.layers[name]
        pools = sum(1 for n in trunk.layer_names[: LAYER_INDEX[name]] if n.startswith("pool"))
        hw = (h >> pools, w >> pools)
        ops = {b: layer_ops(conv, (b, conv.in_channels, *hw), runtime) for b in totals}
        for op in ops[1]:
            times: dict[int, list[float]] = {b: [] for b in totals}
            for _ in range(args.reps + 1):  # the first rep warms up (oneDNN primitive creation)
                for b in totals:
                    times[b].append(timed_call(runtime.device, ops[b][op]) / b)
            med = {b: statistics.median(t[1:]) * 1e3 for b, t in times.items()}
            for b in totals:
                totals[b] += med[b]
            print(f"| {name} | {conv.in_channels}x{hw[0]}x{hw[1]} | {op} | {med[1]:.2f} | "
                  f"{med[args.batch]:.2f} | {med[1] / med[args.batch]:.2f}x |", flush=True)
    print(f"| all | | | {totals[1]:.1f} | {totals[args.batch]:.1f} | "
          f"{totals[1] / totals[args.batch]:.2f}x |")


if __name__ == "__main__":
    main()
