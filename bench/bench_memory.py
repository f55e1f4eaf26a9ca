"""Peak memory per image: the pre-flight estimate (pipeline.accel.memory) against a measurement, and
the largest size that fits a given memory.

Each size is measured in a fresh process: peak resident memory (ru_maxrss) during a short
optimization minus the resident memory just before it (trunk loaded, targets built). The
history is kept short (5 pairs, 8 iterations) so the measurement fills it; the default
history's figure is the estimate, whose activation part the measurement checks.

With `--regions N` the same sizes are measured again with N styles, each in a vertical strip of
the image with soft edges (masks, gatys/guides.py), against the estimate for N regions.

Usage: python -m bench.bench_memory [--sizes 512,1024,2048] [--device cpu] [--block 512]
[--regions 0]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pipeline import Regions, Runtime, StyleJob, StyleParams
from pipeline.accel import memory as accel_memory
from pipeline.accel.memory import GIB, RESERVE, SAFETY, image_bytes
from pipeline.errors import InputError
from pipeline.gatys.blockwise import Grid
from pipeline.gatys.engine import trunk_for

from .arguments import parser

MEASURE = dict(iterations=8, lbfgs_history=5)
ASPECT = (4, 3)  # landscape, as the demo and most photos


def size_of(longest: int) -> tuple[int, int]:
    return longest, round(longest * ASPECT[1] / ASPECT[0])


def estimate(params: StyleParams, runtime: Runtime, size: tuple[int, int], regions: int = 0
             ) -> int:
    trunk, _ = trunk_for(params, runtime)
    return image_bytes(runtime.compute_trunk(trunk), params, size, runtime.channels_last,
                       regions)


def rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def strips(folder: Path, size: tuple[int, int], n: int) -> tuple[str, ...]:
    """n soft masks that split an image of `size` (w, h) into vertical strips; they sum to 1."""
    w, h = size
    x = (np.arange(w) + 0.5) * n / w
    paths = []
    for i in range(n):
        ramp = np.clip(np.minimum(x - i + 0.5, i + 1.5 - x), 0, 1)  # 1 inside, a 1/n-wide ramp
        if i == 0:
            ramp[x < 0.5] = 1
        if i == n - 1:
            ramp[x > n - 0.5] = 1
        path = folder / f"strip{i}.png"
        Image.fromarray((np.tile(ramp, (h, 1)) * 255).round().astype(np.uint8)).save(path)
        paths.append(str(path))
    return tuple(paths)


def measure_child(longest: int, device: str, block: int = 0, regions: int = 0) -> None:
    """In a fresh process: print the peak bytes one image's optimization added (by blocks of
    `block` px if not 0; with `regions` styles in strips if not 0)."""
    from pipeline.api import prepare, stylize_prepared
    from pipeline.io.examples import landscape, swirls

    # The heap gives freed memory back, so the warm-up's peak (targets, the final evaluation)
    # cannot hide the optimization's: by blocks, those are of the same order.
    runtime = Runtime.start(device, block_size=block, keep_cpu_memory=False)
    params = StyleParams(size=longest, **MEASURE)
    folder = Path(tempfile.mkdtemp(prefix="bench-memory-"))
    masks = strips(folder, size_of(longest), regions) if regions else ()
    styles = [swirls(seed=i) for i in range(max(1, regions))]
    job = prepare(StyleJob(landscape(*size_of(longest)), styles, Regions(masks=masks)), params)
    stylize_prepared([job], params.replace(iterations=0), runtime)  # load, build targets
    if runtime.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = rss()
    stylize_prepared([job], params, runtime)
    peak = (torch.cuda.max_memory_allocated() if runtime.device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    print(json.dumps({"bytes": peak - base}))


def largest_fitting(params: StyleParams, runtime: Runtime, memory: float) -> int:
    """Largest 4:3 longest side whose one-image estimate fits SAFETY * memory - RESERVE,
    run whole."""
    lo, hi = 16, 65536
    while hi - lo > 8:
        mid = (lo + hi) // 2
        fits = estimate(params, runtime, size_of(mid)) <= SAFETY * memory - RESERVE
        lo, hi = (mid, hi) if fits else (lo, mid)
    return lo


def measure(longest: int, device: str, block: int, regions: int = 0) -> int:
    out = subprocess.run([sys.executable, "-m", "bench.bench_memory", "--child", str(longest),
                          "--device", device, "--block", str(block), "--regions", str(regions)],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["bytes"]


BLOCK_SIDES = (4096, 6144, 8192)
MEMORIES = (("24 GiB (this CPU machine)", 24 * GIB), ("80 GB GPU", 80e9), ("141 GB GPU", 141e9))


def plan_text(params: StyleParams, runtime: Runtime, memory: float, longest: int) -> str:
    """What the pre-flight would do with `memory` free: whole, blocks of N px with H pairs."""
    trunk, _ = trunk_for(params, runtime)
    net = runtime.compute_trunk(trunk)
    free = accel_memory.available_bytes
    accel_memory.available_bytes = lambda device: int(memory)
    try:
        fit = accel_memory.plan_stage(net, params, size_of(longest), params.iterations, 1,
                                      runtime.device, runtime.channels_last)
    except InputError:
        return "refused"
    finally:
        accel_memory.available_bytes = free
    history = fit.history or params.lbfgs_history
    return "whole" if not fit.block else f"blocks of {fit.block}, history {history}"


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--sizes", default="512,1024,2048")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--block", type=int, default=512,
                    help="also measure by blocks of this side (0: not)")
    ap.add_argument("--regions", type=int, default=0,
                    help="also measure with this many styles in strips (masks; 0: not)")
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        measure_child(args.child, args.device, args.block, args.regions)
        return
    runtime = Runtime.start(args.device)
    default = StyleParams()
    print(f"{runtime.device} {runtime.precision}{' channels_last' if runtime.channels_last else ''}"
          f", 4:3 images, L-BFGS\n")
    masked = (f" with {args.regions} regions: estimate (GiB) | measured (GiB) | measured / "
              "estimate |" if args.regions else "")
    print("| size | estimate, history 5 (GiB) | measured, history 5 (GiB) | measured / estimate "
          f"|{masked} estimate, default history 100 (GiB) |")
    print("|---|---|---|---|---|" + "---|---|---|" * bool(args.regions))
    sizes = [int(s) for s in args.sizes.split(",")]
    for longest in sizes:
        size = size_of(longest)
        measured = measure(longest, args.device, 0)
        est = estimate(StyleParams(**MEASURE), runtime, size)
        with_regions = ""
        if args.regions:
            peak = measure(longest, args.device, 0, args.regions)
            masked_est = estimate(StyleParams(**MEASURE), runtime, size, args.regions)
            with_regions = f" {masked_est / GIB:.2f} | {peak / GIB:.2f} | {peak / masked_est:.2f} |"
        print(f"| {size[0]}x{size[1]} | {est / GIB:.2f} | {measured / GIB:.2f} | "
              f"{measured / est:.2f} |{with_regions} "
              f"{estimate(default, runtime, size) / GIB:.2f} |", flush=True)
    if args.block:
        print(f"\nBy blocks of {args.block} px (--block-size), history 5:\n")
        print("| size | estimate (GiB) | measured (GiB) | measured / estimate |\n|---|---|---|---|")
        trunk, _ = trunk_for(default, runtime)
        net = runtime.compute_trunk(trunk)
        params = StyleParams(**MEASURE)
        cost = accel_memory.pixel_cost(net, params.layers, params.content_layers,
                                       runtime.channels_last)
        margin = Grid.of(params.layers).margin
        for longest in sizes:
            est = accel_memory.block_bytes(cost, params, size_of(longest), args.block, margin,
                                           params.lbfgs_history)
            measured = measure(longest, args.device, args.block)
            print(f"| {'x'.join(map(str, size_of(longest)))} | {est / GIB:.2f} | "
                  f"{measured / GIB:.2f} | {measured / est:.2f} |", flush=True)
    print("\nLargest 4:3 image (longest side, px) that the pre-flight runs whole in:\n")
    print("| memory | default (history 100) | lbfgs_history 20 |")
    print("|---|---|---|")
    for name, memory in (("80 GB GPU (80e9 bytes)", 80e9), ("24 GiB (this CPU machine)",
                                                            24 * GIB)):
        sides = [largest_fitting(p, runtime, memory)
                 for p in (default, default.replace(lbfgs_history=20))]
        print(f"| {name} | {sides[0]} | {sides[1]} |")
    print("\nPast that, by blocks (the pre-flight's plan for one image, default parameters, "
          "one 500-iteration stage):\n")
    print("| memory | " + " | ".join(f"{s} px" for s in BLOCK_SIDES) + " |")
    print("|---|" + "---|" * len(BLOCK_SIDES))
    for name, memory in MEMORIES:
        print(f"| {name} | " + " | ".join(plan_text(default, runtime, memory, s)
                                          for s in BLOCK_SIDES) + " |")


if __name__ == "__main__":
    main()
