"""One long video on several workers: `pipeline run` of a one-clip manifest as the frame chain
on one worker, as the multi-pass scheme whole on one worker, and as the multi-pass scheme with
its passes cut into pieces over --workers workers (bulk/pass_plan.py), the runs taking turns.
The clip is the synthetic camera of bench_video.py over a photo, written as an H.264 file; the
table gives each run's wall time (the whole `pipeline run`, start-up included), frames per
hour, and the paper's stability of the output video with the exact flow, against the chain's.

Usage: python -m bench.bench_video_workers [--scene ../shared/data/images/boston.jpg]
[--style starry_night] [--size 128] [--frames 16] [--passes 4x40] [--workers 2] [--rounds 1]
[--iterations N] [--devices cuda:0,cuda:1]
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from bench.bench_video import benchmark_clip
from pipeline.accel.machine import cpu_model
from pipeline.bulk.manifest import write_manifest
from pipeline.video.synthetic import stability, write_clip

from .arguments import parser


def _frames(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--scene", type=Path, default=Path("../shared/data/images/boston.jpg"))
    ap.add_argument("--style", default="starry_night")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--passes", default="4x40", help="passes x iterations of a later pass")
    ap.add_argument("--workers", type=int, default=2, help="CPU workers of the pieces' run")
    ap.add_argument("--devices", default="cpu", help="cpu, or GPUs (cuda:0,cuda:1): the "
                    "single-worker runs take the first, the pieces' run all of them")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--iterations", type=int, default=0, help="of the first pass or frame "
                    "(0: the default)")
    args = ap.parse_args()
    style = next(args.scene.parent.glob(f"{args.style}.*")).resolve()
    clip, size = benchmark_clip(args.scene, args.size, args.frames)
    passes, per = map(int, args.passes.split("x"))
    multi = ["--set", f"passes={passes}", "--set", f"pass_iterations={per}"]
    one = ["--devices", args.devices.split(",")[0], "--workers", "1"]
    spread = args.devices.count(",") + 1 if args.devices != "cpu" else args.workers
    runs = {"chain, 1 worker": one,
            f"multi-pass {args.passes}, 1 worker (whole)": [*one, *multi],
            f"multi-pass {args.passes}, {spread} workers (pieces)":
                ["--devices", args.devices, "--workers", str(args.workers), *multi]}
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    steadiness: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_clip(clip, folder / "clip.mp4", Fraction(8), audio=False)
        manifest = write_manifest([{"content": str(folder / "clip.mp4"), "style": str(style),
                                    "output": "clip.mp4"}], folder / "manifest.parquet")
        for r in range(args.rounds):
            for n, (name, extra) in enumerate(runs.items()):
                out = folder / f"out-{r}-{n}"
                began = time.perf_counter()
                done = subprocess.run(
                    [sys.executable, "-m", "pipeline", "run", str(manifest), "--out", str(out),
                     "--set", f"size={args.size}", "--no-report", *extra,
                     *(["--set", f"iterations={args.iterations}"] if args.iterations else [])],
                    capture_output=True, text=True)
                if done.returncode:
                    sys.exit(f"{name}: exit {done.returncode}\n{done.stdout[-3000:]}")
                seconds[name].append(time.perf_counter() - began)
                steadiness[name] = stability(_frames(out / "clip.mp4"), clip)
    chain = steadiness["chain, 1 worker"]
    print(f"{args.scene.name} x {style.name}, {size[0]}x{size[1]}, {args.frames} frames, "
          f"{args.rounds} round(s), {cpu_model()}")
    print("| run | wall (median) | frames/hour | stability | vs the chain |")
    print("|---|---|---|---|---|")
    for name, times in seconds.items():
        wall = statistics.median(times)
        print(f"| {name} | {wall:.0f} s | {3600 * args.frames / wall:,.0f} | "
              f"{steadiness[name]:.1f} | {steadiness[name] / chain:.2f}x |")


if __name__ == "__main__":
    main()
