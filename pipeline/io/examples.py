"""Example images drawn by code, for `make demo` and the example manifest (nothing downloaded).

The content is a landscape (sky, sun, hills, a house); the styles are swirling brush strokes
and a stained-glass mosaic. `python -m pipeline.io.examples DIR` writes them to DIR (default
manifests/images), where manifests/demo.parquet expects them.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .files import atomic_path


def landscape(w: int = 640, h: int = 480) -> Image.Image:
    yy = np.mgrid[0:h, 0:w][0].astype(np.float32)
    sky = np.stack([90 + 100 * yy / h, 150 + 60 * yy / h, 255 - 30 * yy / h], -1)
    img = Image.fromarray(sky.clip(0, 255).astype(np.uint8))
    d = ImageDraw.Draw(img)
    d.ellipse([w * 0.7, h * 0.1, w * 0.85, h * 0.3], fill=(255, 220, 120))
    for i, (base, color) in enumerate([(0.55, (70, 130, 60)), (0.7, (40, 100, 40))]):
        pts = [(x, h * base + 30 * np.sin(x / (70 + 30 * i) + i)) for x in range(0, w + 8, 8)]
        d.polygon([*pts, (w, h), (0, h)], fill=color)
    d.rectangle([w * 0.2, h * 0.55, w * 0.38, h * 0.75], fill=(200, 60, 50))
    d.polygon([(w * 0.18, h * 0.56), (w * 0.29, h * 0.42), (w * 0.40, h * 0.56)],
              fill=(90, 50, 40))
    d.rectangle([w * 0.27, h * 0.65, w * 0.31, h * 0.75], fill=(60, 40, 30))
    return img.filter(ImageFilter.GaussianBlur(1))


def swirls(w: int = 512, h: int = 512, seed: int = 0) -> Image.Image:
    """Short curved strokes following a swirling flow field, in night-sky colors."""
    rng = np.random.default_rng(seed)
    img = Image.new("RGB", (w, h), (20, 40, 90))
    d = ImageDraw.Draw(img)
    palette = [(250, 220, 80), (60, 110, 190), (140, 190, 230), (25, 60, 130), (240, 240, 200)]
    for _ in range(5000):
        x, y = rng.uniform(0, w), rng.uniform(0, h)
        color = palette[rng.integers(len(palette))]
        for _ in range(6):
            angle = np.sin(x / 60) * 2 + np.cos(y / 45) * 2
            nx, ny = x + 6 * np.cos(angle), y + 6 * np.sin(angle)
            d.line([(x, y), (nx, ny)], fill=color, width=3)
            x, y = nx, ny
    return img


def mosaic(w: int = 512, h: int = 512, seed: int = 1) -> Image.Image:
    """Voronoi cells in saturated colors with dark leading, like stained glass."""
    rng = np.random.default_rng(seed)
    pts = rng.uniform(0, 1, (160, 2)) * (w, h)
    colors = rng.choice(np.array([(200, 30, 40), (240, 180, 30), (30, 90, 170), (30, 140, 70),
                                  (230, 230, 210)]), len(pts))
    yy, xx = np.mgrid[0:h, 0:w]
    dist = (xx[..., None] - pts[:, 0]) ** 2 + (yy[..., None] - pts[:, 1]) ** 2
    order = np.sort(dist, axis=-1)
    rgb = colors[dist.argmin(-1)].astype(np.float32)
    rgb[np.sqrt(order[..., 1]) - np.sqrt(order[..., 0]) < 3] = 25
    return Image.fromarray(rgb.astype(np.uint8))


IMAGES = {"landscape.png": landscape, "swirls.png": swirls, "mosaic.png": mosaic}


def write_images(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, draw in IMAGES.items():
        with atomic_path(folder / name) as tmp:
            draw().save(tmp, format="PNG")
        paths.append(folder / name)
    return paths


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "manifests/images")
    for path in write_images(target):
        print(f"drew {path}")
