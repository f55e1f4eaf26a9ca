"""What Ray costs on one machine: the same manifest run with --distributor local and with
--distributor ray (a Ray started by the run on this machine: one node, one 1-CPU actor per
CPU worker, the layout local runs), in turn, each into a fresh folder. Whole runs as a user
runs them, so Ray's start-up and its per-iteration event traffic are both in the figure.

    python -m bench.bench_distributors [--jobs 8] [--size 128] [--iterations 40] [--rounds 2]
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

from pipeline.bulk.build import build_rows
from pipeline.bulk.manifest import write_manifest
from pipeline.io.examples import landscape, swirls

from .arguments import parser


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--jobs", type=int, default=8)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--iterations", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-distributors-"))
    landscape().save(root / "content.png")
    styles = []
    for i in range(args.jobs):
        swirls(seed=i).save(path := root / f"style{i}.png")
        styles.append(path)
    manifest = write_manifest(build_rows([root / "content.png"], styles, {}), root / "m.parquet")
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    seconds: dict[str, list[float]] = {"local": [], "ray": []}
    optimizing: dict[str, list[float]] = {"local": [], "ray": []}
    for _ in range(args.rounds):
        for name in seconds:
            out = root / f"out-{name}"
            shutil.rmtree(out, ignore_errors=True)
            start = time.perf_counter()
            done = subprocess.run(
                [sys.executable, "-m", "pipeline", "--quiet-log", "run", str(manifest), "--out",
                 str(out), "--distributor", name, "--set", f"size={args.size}", "--set",
                 f"iterations={args.iterations}", "--set", "tol=0"], env=env,
                capture_output=True, text=True)
            if done.returncode:
                sys.exit(f"{name} run failed:\n{done.stdout}{done.stderr}")
            seconds[name].append(time.perf_counter() - start)
            optimizing[name].append(_optimize_seconds(out))
    ratios = [r / lo for lo, r in zip(seconds["local"], seconds["ray"], strict=True)]
    opt_ratios = [r / lo for lo, r in zip(optimizing["local"], optimizing["ray"], strict=True)]
    print(f"{args.jobs} jobs, {args.size} px, {args.iterations} iterations, "
          f"{os.cpu_count()} cores, {args.rounds} rounds (local, ray in turn)")
    print("| distributor | wall s (median) | images/hour | batches' optimization s (median) |")
    print("|---|---|---|---|")
    for name, values in seconds.items():
        median = statistics.median(values)
        print(f"| {name} | {median:.1f} | {args.jobs / median * 3600:,.0f} | "
              f"{statistics.median(optimizing[name]):.1f} |")
    print(f"ray / local, per round: wall {', '.join(f'{r:.3f}' for r in ratios)}; "
          f"optimization {', '.join(f'{r:.3f}' for r in opt_ratios)}")
    shutil.rmtree(root, ignore_errors=True)


def _optimize_seconds(out: Path) -> float:
    """The batches' optimization seconds, summed (each of a batch's rows repeats its batch's)."""
    batches = {(r["device"], r["started_at"]): r["seconds"]
               for part in (out / "ledger").glob("part-*.parquet")
               for r in pq.read_table(part).to_pylist()}
    return sum(batches.values())


if __name__ == "__main__":
    main()
