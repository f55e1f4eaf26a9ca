"""Spatial control on real images: region purity, and what masks cost per iteration.

The content photo is split by a soft mask (left: style A; right: style B; a linear ramp over
the middle `--ramp` of the width), stylized at `--size` with default parameters. Purity: for
each region (its mask as a guide, `inside` mode), the guided Gram loss of the result against
style A's Gram and against style B's, summed over the style layers. A region's own style should
be the much closer one; the ratio (other / own) is what the table reports. Cost: seconds per
iteration with the two masks against the same job with style A alone and no mask, taking
turns, `--time-iterations` each. `--figure` keeps the stylized image; `--picture` the README's
labelled sheet (docs/regions.jpg): the content and the first mask at half height beside it.

Usage: python -m bench.bench_regions [--images DIR] [--content tubingen] [--styles
starry_night,the_scream] [--size 512] [--iterations 400] [--ramp 0.3] [--figure PATH]
[--picture docs/regions.jpg] [--time-iterations 20]
"""

from __future__ import annotations

import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from pipeline import Regions, Runtime, StyleJob, StyleParams
from pipeline.accel.machine import cpu_model
from pipeline.api import prepare, stylize_file, stylize_prepared
from pipeline.gatys.engine import trunk_for
from pipeline.gatys.guides import layer_guides
from pipeline.gatys.losses import gram, guided_gram
from pipeline.io.pixels import to_tensor

from .arguments import parser


def soft_halves(content: Path, ramp: float, folder: Path) -> tuple[Path, Path]:
    """Left and right masks of the content's shape, a linear ramp over the middle `ramp`."""
    with Image.open(content) as img:
        w, h = img.size
    x = np.arange(w) / max(w - 1, 1)
    right = np.tile(np.clip((x - (1 - ramp) / 2) / ramp, 0, 1), (h, 1))
    paths = folder / "left.png", folder / "right.png"
    for path, values in zip(paths, (1 - right, right), strict=True):
        Image.fromarray(np.rint(values * 255).astype(np.uint8)).save(path)
    return paths


def picture(content: Path, mask: Path, result: Image.Image) -> Image.Image:
    """The stylized image with the content and the first mask stacked at its left, labelled."""
    half = (result.width // 2, result.height // 2)
    sheet = Image.new("RGB", (result.width + half[0], result.height))
    sheet.paste(result, (half[0], 0))
    draw = ImageDraw.Draw(sheet)
    for y, path, label in ((0, content, "content"),
                           (half[1], mask, "mask 1; mask 2 = 1 - mask 1")):
        with Image.open(path) as img:
            sheet.paste(img.convert("RGB").resize(half, Image.Resampling.LANCZOS), (0, y))
        box = draw.textbbox((4, y + 4), label)
        draw.rectangle((box[0] - 2, box[1] - 2, box[2] + 2, box[3] + 2), fill="white")
        draw.text((4, y + 4), label, fill="black")
    return sheet


def purity(result: torch.Tensor, job: StyleJob, params: StyleParams, runtime: Runtime
           ) -> np.ndarray:
    """[region, style]: each region's guided Gram loss against each style's Gram."""
    content, styles = prepare(job, params)
    trunk, _ = trunk_for(params, runtime)
    layers = params.style_layers
    assert content.regions is not None
    with torch.no_grad():
        feats = trunk(result[None].to(runtime.device), layers)
        guides = layer_guides(content.regions.to(runtime.device), layers, params.mask_mode)
        targets = [trunk(s.pixels[None].to(runtime.device), layers) for s in styles]
        return np.array([[sum((guided_gram(feats[k], guides[k][r:r + 1])
                               - gram(t[k])).square().mean().item() for k in layers)
                          for t in targets] for r in range(len(content.regions))])


def seconds_per_iteration(job: StyleJob, params: StyleParams, runtime: Runtime) -> float:
    prepared = prepare(job, params)
    start = time.perf_counter()
    stylize_prepared([prepared], params, runtime)
    return (time.perf_counter() - start) / params.iterations


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--images", type=Path, default=Path("../shared/data/images"))
    ap.add_argument("--content", default="tubingen")
    ap.add_argument("--styles", default="starry_night,the_scream")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--iterations", type=int, default=400)
    ap.add_argument("--ramp", type=float, default=0.3)
    ap.add_argument("--figure", type=Path)
    ap.add_argument("--picture", type=Path)
    ap.add_argument("--time-iterations", type=int, default=20)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()  # the code that runs, not at the end
    content = args.images / f"{args.content}.jpg"
    styles = [args.images / f"{s}.jpg" for s in args.styles.split(",")]
    runtime = Runtime.start(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        left, right = soft_halves(content, args.ramp, Path(tmp))
        regions = Regions(masks=(str(left), str(right)))
        job = StyleJob(content, styles, regions)
        params = StyleParams(size=args.size, iterations=args.iterations)
        out = args.figure or Path(tmp) / "out.png"
        result = stylize_file(content, styles, out, params, runtime, regions=regions)
        if args.picture:
            picture(content, left, result.image).save(args.picture, quality=88)
        table = purity(to_tensor(result.image), job, params, runtime)
        timed = params.replace(iterations=args.time_iterations, tol=0)
        plain = StyleJob(content, styles[:1])
        masked_s, plain_s = [], []
        for _ in range(2):
            masked_s.append(seconds_per_iteration(job, timed, runtime))
            plain_s.append(seconds_per_iteration(plain, timed, runtime))
    print(f"\n{content.name} at {args.size} px, {result.iterations} iterations, soft masks "
          f"(ramp {args.ramp:.0%} of the width); {runtime.device} {runtime.precision}, "
          f"{cpu_model()}, commit {commit}\n")
    print("| region | loss vs " + " | loss vs ".join(s.stem for s in styles)
          + " | other / own |")
    print("|---|" + "---|" * (len(styles) + 1))
    for r, row in enumerate(table):
        own, other = row[r], row[1 - r]
        print(f"| {styles[r].stem} (mask {r + 1}) | "
              + " | ".join(f"{v:.3g}" for v in row) + f" | {other / own:.1f}x |")
    print(f"\ns/it: masked {min(masked_s):.3f}, one style without masks {min(plain_s):.3f} "
          f"({min(masked_s) / min(plain_s):.2f}x), best of 2, {args.time_iterations} "
          f"iterations each")


if __name__ == "__main__":
    main()
