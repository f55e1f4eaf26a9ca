"""Input decoding: the host time to ready one job's images, with large JPEGs decoded at a
reduced DCT scale (the default) against a full decode, taking turns.

Usage: python -m bench.bench_inputs [--sizes 256,512] [--reps 5]

A job entering a batch waits for this (on a GPU, the device waits with it), and so does each
thumbnail of a first report. "prepare" is pipeline.api.prepare of content + style at the
size (decode, EXIF, ICC, resize, sha256); "thumbnail" is a report's 320 px one. Images: the
photos and paintings in ../shared/data/images when there, else a generated 5000x3750 JPEG.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

import pipeline.io.images as images
from pipeline import StyleJob, StyleParams
from pipeline.accel.machine import median_seconds
from pipeline.api import prepare
from pipeline.report.thumbs import Thumbnails

from .arguments import parser

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "images"
FULL = 10**9  # a DRAFT_MARGIN no image exceeds: every JPEG decoded whole


def inputs(folder: Path) -> tuple[list[Path], Path]:
    """(content photos, one style painting)."""
    if (SHARED / "boston.jpg").is_file():
        return [SHARED / "tubingen.jpg", SHARED / "boston.jpg"], SHARED / "starry_night.jpg"
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:3750, 0:5000]
    noise = rng.normal(0, 12, (3750, 5000, 3))
    rgb = np.stack([xx / 20, yy / 15, (xx + yy) / 35], -1) % 255 + noise
    photo = folder / "photo.jpg"
    Image.fromarray(rgb.clip(0, 255).astype(np.uint8)).save(photo, quality=92)
    return [photo], photo


def margin(value: int, fn: Callable[[], object]) -> Callable[[], object]:
    def call() -> object:
        saved, images.DRAFT_MARGIN = images.DRAFT_MARGIN, value
        try:
            return fn()
        finally:
            images.DRAFT_MARGIN = saved
    return call


def thumbnail(folder: Path, source: Path) -> None:
    """A report's thumbnail of `source`, made anew."""
    made = Thumbnails(folder)(source)
    assert made is not None
    made.unlink()


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--sizes", default="256,512", help="output longest sides")
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        contents, style = inputs(Path(tmp))
        print("| image | work | full decode (ms) | reduced scale (ms) | ratio |")
        print("|---|---|---|---|---|")
        for content in contents:
            with Image.open(content) as img:
                label = f"{content.name} {img.size[0]}x{img.size[1]}"
            work: dict[str, Callable[[], object]] = {
                f"prepare at {size} px": lambda size=size, content=content: prepare(
                    StyleJob(content, [style]), StyleParams(size=size))
                for size in map(int, args.sizes.split(","))}
            work["thumbnail"] = lambda content=content: thumbnail(Path(tmp), content)
            for what, fn in work.items():
                ms = {name: seconds * 1000 for name, seconds in median_seconds(
                    {"full": margin(FULL, fn), "reduced": fn}, args.reps).items()}
                print(f"| {label} | {what} | {ms['full']:.0f} | {ms['reduced']:.0f} | "
                      f"{ms['full'] / ms['reduced']:.2f}x |")


if __name__ == "__main__":
    main()
