"""Images per hour of a bulk `pipeline run`: the defaults against fixed batches of direct
convolutions (the way bulk runs ran before continuous batching and Winograd convolutions).

A manifest of 24 jobs, half at each of two sizes (two groups), default parameters (early
stopping on), run whole by `pipeline run --batch-size B` in each configuration (CONFIGS;
`--configs` picks them), in turns, `--rounds` times, the order rotating each round.
Images/hour is the jobs over the span from the first job's start to the last one's end in the
ledger (process start-up and the manifest scan are left out). Also prints the iterations each
job took: a fixed batch runs until its slowest job stops, a batch in slots refills a row at
once. On a GPU (bench/gpu.sh) `--configs 1,2`: Winograd convolutions are a CPU path.

With `--photos a.jpg,b.jpg --paintings c.jpg,d.jpg` the contents are those photos (each as it
is, mirrored and cropped to its centre: 6 contents) and the styles those paintings; else drawn
example images.

Usage: python -m bench.bench_continuous [--sizes 96,128] [--batch 4] [--rounds 1]
[--device cpu] [--iterations 400] [--configs 1,2,3] [--photos A,B --paintings C,D]
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image, ImageOps

from pipeline.bulk import ledger
from pipeline.bulk.build import build_rows
from pipeline.bulk.manifest import write_manifest
from pipeline.io.examples import landscape, mosaic, swirls

from .arguments import parser

JOBS_PER_SIZE = 12
CONFIGS = {  # name -> `pipeline run` options; the first is the baseline
    "fixed batches, direct convs": ["--no-continuous", "--winograd", "off"],
    "continuous (slots), direct convs": ["--continuous", "--winograd", "off"],
    "continuous, winograd auto (the defaults)": [],
}


def drawn(folder: Path) -> tuple[list[Path], list[Path]]:
    """2 drawn contents, 6 drawn styles."""
    contents = [folder / "landscape.png", folder / "mosaic.png"]
    landscape().save(contents[0])
    mosaic(640, 480).save(contents[1])
    styles = [folder / f"style{i}.png" for i in range(JOBS_PER_SIZE // len(contents))]
    for i, path in enumerate(styles):
        swirls(seed=i).save(path)
    return contents, styles


def from_photos(folder: Path, photos: list[str], paintings: list[str]
                ) -> tuple[list[Path], list[Path]]:
    """Each photo as it is, mirrored and its centre; the paintings as they are."""
    contents = []
    for i, photo in enumerate(photos):
        image = Image.open(photo).convert("RGB")
        w, h = image.size
        for name, variant in (("as-is", image), ("mirrored", ImageOps.mirror(image)),
                              ("centre", image.crop((w // 8, h // 8, w - w // 8, h - h // 8)))):
            contents.append(folder / f"photo{i}-{name}.png")
            variant.save(contents[-1])
    return contents, [Path(p) for p in paintings]


def write_dataset(folder: Path, sizes: list[int], contents: list[Path], styles: list[Path]
                  ) -> Path:
    if len(contents) * len(styles) != JOBS_PER_SIZE:
        raise SystemExit(f"{len(contents)} contents x {len(styles)} styles: need "
                         f"{JOBS_PER_SIZE} jobs per size")
    rows = [{**row, "size": size, "output": f"{size}/{i}.png"} for size in sizes
            for i, row in enumerate(build_rows(contents, styles, {}))]
    return write_manifest(rows, folder / "manifest.parquet")


def run(manifest: Path, out: Path, options: list[str], batch: int, device: str,
        iterations: int) -> tuple[float, list[int]]:
    """Images/hour and the iterations of each job."""
    cmd = [sys.executable, "-m", "pipeline", "--quiet-log", "run", str(manifest), "--out",
           str(out), "--devices", device, "--workers", "1", "--batch-size", str(batch),
           "--set", f"iterations={iterations}", *options]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rows = [r for r in ledger.read(out).values() if r["status"] == ledger.DONE]
    span = max(r["finished_at"] for r in rows) - min(r["started_at"] for r in rows)
    return len(rows) / span * 3600, sorted(r["iterations"] for r in rows)


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--sizes", default="96,128")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--iterations", type=int, default=400)
    ap.add_argument("--configs", default="1,2,3", help="1-based numbers of CONFIGS; the first "
                    "named is the baseline")
    ap.add_argument("--photos", default="", help="comma-separated: two photos")
    ap.add_argument("--paintings", default="", help="comma-separated: two paintings")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    names = [list(CONFIGS)[int(k) - 1] for k in args.configs.split(",")]
    rates: dict[str, list[float]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory(prefix="bench-continuous-") as tmp:
        folder = Path(tmp)
        images = (from_photos(folder, args.photos.split(","), args.paintings.split(","))
                  if args.photos else drawn(folder))
        manifest = write_dataset(folder, sizes, *images)
        # Untimed, each configuration once: the first run on a machine exports the trunk,
        # caches every job's targets and measures the Winograd plans, which the first timed
        # run would pay alone.
        for name in names:
            run(manifest, folder / f"warm-up-{names.index(name)}", CONFIGS[name], args.batch,
                args.device, 1)
        for r in range(args.rounds):
            for k in range(len(names)):  # rotated: no configuration is always last
                name = names[(k + r) % len(names)]
                out = folder / f"out-{names.index(name)}-{r}"
                rate, iterations = run(manifest, out, CONFIGS[name], args.batch, args.device,
                                       args.iterations)
                rates[name].append(rate)
                print(f"round {r}, {name}: {rate:.0f} images/h; iterations per job "
                      f"{iterations}", flush=True)
    base = rates[names[0]]
    print(f"\n{args.device}, {2 * JOBS_PER_SIZE} jobs at {args.sizes} px, batch {args.batch}, "
          f"up to {args.iterations} iterations, default early stopping, in turns\n")
    print(f"| configuration | images/hour, each round | vs {names[0]}, each round | "
          "median ratio |")
    print("|---|---|---|---|")
    for name in names:
        ratios = [v / b for v, b in zip(rates[name], base, strict=True)]
        print(f"| {name} | {', '.join(f'{v:.0f}' for v in rates[name])} | "
              f"{', '.join(f'{q:.2f}x' for q in ratios)} | {statistics.median(ratios):.2f}x |")


if __name__ == "__main__":
    main()
