"""Images per hour of whole `pipeline run`s on the CPU: worker processes x batch size.

`--workers N` splits the cores between N processes (each takes cpu_count / N threads), each
running its own batches; a batch shares one set of threads between its images. This bench
runs the same manifest (one content, eight styles: eight jobs of one size) once per
configuration, in turns, `--rounds` times, and reads each run's ledger: images/hour is the
jobs over the span from the first batch's start to the last one's end (process start-up and
the manifest scan are left out; target precomputation is in).

Usage: python -m bench.bench_workers [--size 256] [--iterations 100]
[--configs 1x1,1x4,2x1,2x2] [--rounds 2]; a configuration is WORKERSxBATCH.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from pipeline.bulk import ledger
from pipeline.bulk.build import build_rows
from pipeline.bulk.manifest import write_manifest
from pipeline.io.examples import landscape, swirls

from .arguments import parser

JOBS = 8


def write_dataset(folder: Path) -> Path:
    content = folder / "content.png"
    landscape().save(content)
    styles = []
    for i in range(JOBS):
        styles.append(folder / f"style{i}.png")
        swirls(seed=i).save(styles[-1])
    return write_manifest(build_rows([content], styles, {}), folder / "manifest.parquet")


def images_per_hour(manifest: Path, out: Path, workers: int, batch: int, size: int,
                    iterations: int) -> float:
    cmd = [sys.executable, "-m", "pipeline", "--quiet-log", "run", str(manifest), "--out",
           str(out), "--devices", "cpu", "--workers", str(workers), "--batch-size", str(batch),
           "--set", f"size={size}", "--set", f"iterations={iterations}", "--set", "tol=0"]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rows = [r for r in ledger.read(out).values() if r["status"] == ledger.DONE]
    if len(rows) != JOBS:
        raise RuntimeError(f"{out}: {len(rows)} of {JOBS} jobs done")
    span = max(r["finished_at"] for r in rows) - min(r["started_at"] for r in rows)
    return JOBS / span * 3600


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--iterations", type=int, default=100)
    ap.add_argument("--configs", default="1x1,1x4,2x1,2x2")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    configs = [tuple(int(v) for v in c.split("x")) for c in args.configs.split(",")]
    rates: dict[tuple[int, ...], list[float]] = {c: [] for c in configs}
    with tempfile.TemporaryDirectory(prefix="bench-workers-") as tmp:
        manifest = write_dataset(Path(tmp))
        for r in range(args.rounds):
            for workers, batch in configs:
                out = Path(tmp) / f"out-{workers}x{batch}-{r}"
                rates[workers, batch].append(images_per_hour(manifest, out, workers, batch,
                                                             args.size, args.iterations))
    print(f"cpu, {JOBS} jobs of {args.size} px x {args.iterations} iterations, "
          f"configurations in turns, {args.rounds} rounds; images/hour per round\n")
    print("| workers x batch | images/hour, each round | vs first config, each round | "
          "median ratio |")
    print("|---|---|---|---|")
    for config, values in rates.items():
        ratios = [v / b for v, b in zip(values, rates[configs[0]], strict=True)]
        print(f"| {config[0]} x {config[1]} | {', '.join(f'{v:.0f}' for v in values)} | "
              f"{', '.join(f'{q:.2f}x' for q in ratios)} | {statistics.median(ratios):.2f}x |")

if __name__ == "__main__":
    main()
