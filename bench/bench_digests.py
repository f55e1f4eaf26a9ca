"""Seconds for `pipeline run`'s scan of a manifest of large photos: every file read whole
for its digest (how scans were before digests were remembered) against the digests
remembered in the cache by each file's identity, on a first run and on a rerun.

Makes COPIES distinct copies of PHOTO (each with a few bytes of its own appended, so no two
share a digest), a manifest of them against one style, and times `scan.scan` as `pipeline
run` makes it (headers only), the configurations taking turns, `--rounds` times; medians.
With `--cold` (root only) the page cache is dropped before each scan, as after a reboot or
on a dataset larger than memory.

Usage: python -m bench.bench_digests --photo ../shared/data/images/boston.jpg
[--style ../shared/data/images/starry_night.jpg] [--copies 300] [--rounds 3] [--cold]
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from pipeline.bulk.make_manifest import build_manifest
from pipeline.bulk.scan import scan
from pipeline.io import files

from .arguments import parser

IMAGES = Path("../shared/data/images")


def _drop_page_cache() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--photo", type=Path, default=IMAGES / "boston.jpg")
    ap.add_argument("--style", type=Path, default=IMAGES / "starry_night.jpg")
    ap.add_argument("--copies", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--cold", action="store_true", help="drop the page cache before each scan")
    args = ap.parse_args()
    remember_from = files.REMEMBER_FROM
    with tempfile.TemporaryDirectory(prefix="bench-digests-") as tmp:
        root = Path(tmp)
        photo = args.photo.read_bytes()
        (root / "c").mkdir()
        for i in range(args.copies):
            (root / "c" / f"p{i:05d}.jpg").write_bytes(photo + str(i).encode())
        manifest = root / "m.parquet"
        build_manifest(manifest, [str(root / "c")], [str(args.style)])
        cache = root / "cache"

        def timed(remember: bool, fresh: bool) -> float:
            files.REMEMBER_FROM = remember_from if remember else 1 << 62
            if fresh:
                shutil.rmtree(cache, ignore_errors=True)
            if args.cold:
                _drop_page_cache()
            start = time.perf_counter()
            found = scan(manifest, root / "out", {}, decode=False, cache=str(cache))
            seconds = time.perf_counter() - start
            assert not found.errors and len(found.jobs) == args.copies, found.errors[:3]
            return seconds

        configs = {"every digest read": (False, True), "remembered, first run": (True, True),
                   "remembered, rerun": (True, False)}
        seconds: dict[str, list[float]] = {name: [] for name in configs}
        for _ in range(args.rounds):
            for name, (remember, fresh) in configs.items():
                seconds[name].append(timed(remember, fresh))
    files.REMEMBER_FROM = remember_from
    size = len(photo) / 1e6
    print(f"{args.copies} copies of {args.photo.name} ({size:.1f} MB each), "
          f"{'cold' if args.cold else 'warm'} page cache, median of {args.rounds}\n")
    print("| scan | seconds | vs every digest read |")
    print("|---|---|---|")
    base = statistics.median(seconds["every digest read"])
    for name, values in seconds.items():
        median = statistics.median(values)
        print(f"| {name} | {median:.2f} | {base / median:.2f}x |")


if __name__ == "__main__":
    main()
