"""Seconds to build and check a large dataset-mode manifest: what a bulk run pays before its
first iteration.

Makes CONTENTS small images in class folders and STYLES style images (each distinct file is
read once however many rows use it), builds the cross product with `--mirror` (CONTENTS x
STYLES rows), and times the build, the check `pipeline run` makes (headers only) and the one
`pipeline manifest validate` makes (every image decoded).

Usage: python -m bench.bench_manifest [--contents 2000] [--styles 50]
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from pipeline.bulk.make_manifest import build_manifest
from pipeline.bulk.scan import scan
from pipeline.io.examples import landscape, swirls

from .arguments import parser


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--contents", type=int, default=2000)
    ap.add_argument("--styles", type=int, default=50)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-manifest-") as tmp:
        root = Path(tmp)
        photo, style = landscape(96, 72), swirls(64, 64)
        for i in range(args.contents):
            folder = root / "train" / f"class{i % 20:02d}"
            folder.mkdir(parents=True, exist_ok=True)
            photo.save(folder / f"img{i:06d}.png")
        (root / "styles").mkdir()
        for i in range(args.styles):
            style.save(root / "styles" / f"s{i:03d}.png")
        seconds = {}
        start = time.perf_counter()
        manifest = root / "m.parquet"
        rows, _ = build_manifest(manifest, (), (), root / "train", root / "styles",
                                 recursive=True, mirror=True)
        seconds["manifest build --content-dir --recursive --mirror (cross)"] = (
            time.perf_counter() - start)
        for label, decode in (("pipeline run's check (headers)", False),
                              ("manifest validate (every image decoded)", True)):
            start = time.perf_counter()
            found = scan(manifest, root / "out", {}, decode=decode)
            seconds[label] = time.perf_counter() - start
            assert not found.errors and len(found.jobs) == rows, found.errors[:3]
    print(f"{rows:,} rows: {args.contents:,} content images x {args.styles} styles\n")
    print("| step | seconds | rows per second |")
    print("|---|---|---|")
    for label, s in seconds.items():
        print(f"| {label} | {s:.1f} | {rows / s:,.0f} |")


if __name__ == "__main__":
    main()
