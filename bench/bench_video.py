"""Video: stability, objective and speed of the frame chain against independent frames.

A synthetic camera (pipeline/video/synthetic.py: pan, zoom, a slight turn, a sprite crossing)
over a photo gives a clip with its exact flow. Each --weights value stylizes the whole clip as
a chain (0 = independent frames, the baseline, always run first); the table gives per weight:
the paper's stability measure (mean squared difference of consecutive stylized frames after
warping by the exact flow, over pixels visible in both) and its ratio to the baseline's; each
frame's content+style objective against the independent frame's (mean and worst over the
frames after the first); the mean iterations of the later frames over the first frame's; and
frames per hour. Each --passes value `NxI` runs the multi-pass scheme (N passes, I iterations
a pass after the first) at the default temporal weight; its iterations column is a frame's
total over the chain's first frame's. `--speed` runs the chain alone, at the default
weight, and gives the first frame's seconds and the later frames' rate: what a long clip
approaches.

Usage: python -m bench.bench_video [--scene ../shared/data/images/boston.jpg] [--size 256]
[--frames 12] [--weights 0,50,200,1000] [--passes 4x50] [--style starry_night]
[--json bench-out/video.json] [--preview docs/video-preview.webp] [--speed] [--device cuda]: the
independent frames beside the chain of the last weight, as a looping animated WebP.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline import Runtime, StyleParams
from pipeline.accel.machine import cpu_model
from pipeline.video.chain import stylize_clips
from pipeline.video.frames import ClipSource, Frame
from pipeline.video.params import VideoParams
from pipeline.video.synthetic import Clip, camera_clip, stability

from .arguments import parser


def benchmark_clip(scene_path: Path, longest: int, frames: int) -> tuple[Clip, tuple[int, int]]:
    """The synthetic camera over a photo (halved), `longest` px on its longer side (even)."""
    with Image.open(scene_path) as img:
        scene = np.asarray(img.convert("RGB").reduce(2))
    h, w = scene.shape[:2]
    size = (longest, round(longest * h / w) // 2 * 2) if w >= h else (
        round(longest * w / h) // 2 * 2, longest)
    return camera_clip(scene, size, frames, pan=size[0] / 100, zoom=1.005, turn=0.2), size


def run(clip, style: Path, params: StyleParams, video: VideoParams, runtime: Runtime,
        label: str) -> dict:
    frames: list[Frame] = []
    started = time.perf_counter()
    stylize_clips([ClipSource(lambda i: clip.frames[i], len(clip.frames), [str(style)])],
                  params, video, runtime, lambda c, i: None, frames.append)
    seconds = time.perf_counter() - started
    return {"label": label, "passes": video.passes, "seconds": seconds,
            "stability": stability([f.pixels for f in frames], clip),
            "frames": [f.pixels for f in frames],
            "objective": [f.losses["content"] + f.losses["style"] for f in frames],
            "iterations": [f.iterations for f in frames],
            "frame_seconds": [f.seconds for f in frames]}


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--scene", type=Path, default=Path("../shared/data/images/boston.jpg"))
    ap.add_argument("--style", default="starry_night")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--frames", type=int, default=12)
    ap.add_argument("--weights", default="0,50,200,1000")
    ap.add_argument("--passes", default="", help="multi-pass runs, e.g. 4x50,8x25")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--preview", type=Path)
    ap.add_argument("--speed", action="store_true", help="the chain alone: its frame rates")
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    args = ap.parse_args()
    style = next(args.scene.parent.glob(f"{args.style}.*"))
    clip, size = benchmark_clip(args.scene, args.size, args.frames)
    runtime = Runtime.start(args.device)
    params = StyleParams(size=args.size)
    if args.speed:
        speed(run(clip, style, params, VideoParams(), runtime, "chain"), size, runtime)
        return
    weights = [0.0, *(w for w in map(float, args.weights.split(",")) if w != 0)]
    runs = [(VideoParams(temporal_weight=w), f"{w:g}") for w in weights]
    for spec in filter(None, args.passes.split(",")):
        n, per = map(int, spec.split("x"))
        runs.append((VideoParams(passes=n, pass_iterations=per), f"multi-pass {n}x{per}"))
    results = [run(clip, style, params, video, runtime, label) for video, label in runs]
    base = results[0]
    print(f"{args.scene.name} x {style.name}, {size[0]}x{size[1]}, {args.frames} frames, "
          f"{runtime.precision}, {cpu_model()}")
    print("| temporal weight | stability | vs independent | objective vs independent (mean, "
          "worst) | later frames' iterations / first's | frames/hour |")
    print("|---|---|---|---|---|---|")
    for r in results:
        ratios = [a / b for a, b in zip(r["objective"][1:], base["objective"][1:], strict=True)]
        later = (statistics.mean(r["iterations"]) / base["iterations"][0] if r["passes"]
                 else statistics.mean(r["iterations"][1:]) / r["iterations"][0])
        print(f"| {r['label']} | {r['stability']:.1f} | "
              f"{r['stability'] / base['stability']:.2f}x | {statistics.mean(ratios):.3f}, "
              f"{max(ratios):.3f} | {later:.2f} | "
              f"{3600 * args.frames / r['seconds']:,.0f} |")
    if args.preview:
        preview(base["frames"], results[len(weights) - 1]["frames"], args.preview)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        runs = [{k: v for k, v in r.items() if k != "frames"} for r in results]
        args.json.write_text(json.dumps({"size": size, "cpu": cpu_model(), "runs": runs}))


def speed(r: dict, size: tuple[int, int], runtime: Runtime) -> None:
    first, later = r["frame_seconds"][0], r["frame_seconds"][1:]
    iterations = statistics.mean(r["iterations"][1:])
    print(f"| {size[0]}x{size[1]} | {runtime.precision} | {first:.0f} s ({r['iterations'][0]} "
          f"it) | {statistics.mean(later):.1f} s ({iterations:.0f} it) | "
          f"{3600 / statistics.mean(later):,.0f} | "
          f"{3600 * len(r['frame_seconds']) / r['seconds']:,.0f} ({len(later) + 1} frames) | "
          f"{cpu_model()} |")


def preview(left: list[np.ndarray], right: list[np.ndarray], path: Path) -> None:
    """Side by side, looping: what independent frames and the chain look like in motion."""
    gap = np.full((left[0].shape[0], 8, 3), 255, np.uint8)
    frames = [Image.fromarray(np.concatenate([a, gap, b], 1)) for a, b in zip(left, right,
                                                                               strict=True)]
    path.parent.mkdir(parents=True, exist_ok=True)
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=125, loop=0,
                   quality=85)


if __name__ == "__main__":
    main()
