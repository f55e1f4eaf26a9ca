"""A bulk run with its manifest and inputs, then also its run folder, in object storage
against the same run from and to local files: the cost of going through a store.

A real S3 server on 127.0.0.1 (`rclone serve s3`, tests/s3_server.py) over a temporary folder;
`--jobs` tiny jobs (drawn contents x drawn styles x seeds, `--size` px, `--iterations`
iterations, early stopping off), one manifest with local paths and the same manifest in the
bucket (its rows' paths relative to it, so objects). Each round runs each configuration into
fresh --out folders, taking turns (each round starting with the next one) after one untimed
run (the model and the targets cached), the objects fetched anew each time (the cache's
`inputs` emptied); wall time of the whole
`pipeline run` process. The third configuration also writes its run folder to the bucket
(`--out s3://...`: every output, ledger part and trace uploaded as it is written); the fourth
also keeps the cache there (STYLE_PIPELINE_CACHE=s3://...) and runs as a machine that joins
with an empty copy of it (its own XDG_CACHE_HOME each round): the ONNX model and the targets
fetched from the bucket, none computed. The second configuration is also run with the local
copies of the input objects held within a third of their total size (STYLE_PIPELINE_INPUTS_MAX):
the run fetches ahead what fits in half of that, the workers the rest as they come to it.
For the runs into the bucket, the size of the local copy of the run folder each leaves behind
(its last round), and how many outputs it holds.

Usage: python -m bench.bench_object_storage [--jobs 200] [--size 64] [--iterations 10]
[--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pipeline.accel.machine import cpu_model
from pipeline.bulk.manifest import write_manifest
from pipeline.io.copy_budget import INPUTS_MAX_ENV
from pipeline.io.examples import swirls
from pipeline.io.files import cache_dir
from tests.conftest import make_photo
from tests.s3_server import KEY, SECRET, serve_s3

from .arguments import parser


def dataset(folder: Path, jobs: int) -> list[dict]:
    """Rows over 10 contents x 4 styles x as many seeds as `jobs` needs."""
    (folder / "in").mkdir(parents=True)
    contents = [f"in/c{i}.png" for i in range(10)]
    styles = [f"in/s{i}.png" for i in range(4)]
    for i, name in enumerate(contents):
        make_photo((96, 72), seed=i).save(folder / name)
    for i, name in enumerate(styles):
        swirls(96, 96, seed=i).save(folder / name)
    combos = [(c, s) for c in contents for s in styles]
    return [{"content": c, "style": s, "seed": k // len(combos),
             "output": f"{Path(c).stem}-{Path(s).stem}-{k // len(combos)}.png"}
            for k, (c, s) in enumerate(combos * (jobs // len(combos) + 1))][:jobs]


def run(manifest: str, out: str | Path, args: argparse.Namespace, env: dict) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pipeline", "run", manifest, "--out", str(out),
                    "--devices", "cpu", "--set", f"size={args.size}", "--set",
                    f"iterations={args.iterations}", "--set", "tol=0", "--no-report"],
                   check=True, env=env, capture_output=True)
    return time.perf_counter() - start


def local_copy(out: str, env: dict) -> tuple[float, int]:
    """The size in MB of this machine's copy of the run folder at `out` (where the run worked,
    in the cache of `env`), and how many PNG files (outputs) it still holds."""
    code = ("from pipeline.io.files import cache_dir; from pipeline.io.mirror import "
            f"staging_folder; print(staging_folder({out!r}, cache_dir()))")
    folder = Path(subprocess.run([sys.executable, "-c", code], env=env, check=True,
                                 capture_output=True, text=True).stdout.strip())
    files = [p for p in folder.rglob("*") if p.is_file()]
    return (sum(p.stat().st_size for p in files) / 1e6,
            sum(p.suffix == ".png" for p in files))


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--jobs", type=int, default=200)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--iterations", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        root = tmp / "s3"
        local = root / "bucket" / "data"  # the bucket's objects are these files
        rows = dataset(local, args.jobs)
        write_manifest(rows, local / "m.parquet")
        with serve_s3(root) as endpoint:
            env = {**os.environ, "STYLE_PIPELINE_STORAGE_OPTIONS": json.dumps(
                {"endpoint_url": endpoint, "key": KEY, "secret": SECRET})}
            shared = {**env, "STYLE_PIPELINE_CACHE": "s3://bucket/cache"}
            third = sum(p.stat().st_size for p in (local / "in").iterdir()) // 3
            run(str(local / "m.parquet"), tmp / "warm", args, env)  # model, targets cached
            run(str(local / "m.parquet"), tmp / "warm-shared", args,  # ... and in the bucket
                {**shared, "XDG_CACHE_HOME": str(tmp / "first-machine")})
            configs = {  # name -> (manifest, --out of round k, environment of round k)
                "local": (str(local / "m.parquet"), lambda k: tmp / f"l{k}", lambda k: env),
                "s3": ("s3://bucket/data/m.parquet", lambda k: tmp / f"s{k}", lambda k: env),
                "s3 limit": ("s3://bucket/data/m.parquet", lambda k: tmp / f"b{k}",
                             lambda k: {**env, INPUTS_MAX_ENV: str(third)}),
                "s3 out": ("s3://bucket/data/m.parquet", lambda k: f"s3://bucket/out{k}",
                           lambda k: env),
                "s3 cache": ("s3://bucket/data/m.parquet", lambda k: f"s3://bucket/outc{k}",
                             lambda k: {**shared, "XDG_CACHE_HOME": str(tmp / f"joins-{k}")})}
            times: dict[str, list[float]] = {name: [] for name in configs}
            kept: dict[str, tuple[float, int]] = {}
            for k in range(args.rounds):
                names = list(configs)
                for name in names[k % len(names):] + names[:k % len(names)]:  # turns rotate
                    manifest, out, environment = configs[name]
                    shutil.rmtree(cache_dir() / "inputs", ignore_errors=True)
                    times[name].append(run(manifest, out(k), args, environment(k)))
                    if isinstance(out(k), str):
                        kept[name] = local_copy(out(k), environment(k))
    best = {k: min(v) for k, v in times.items()}
    print(f"\n{args.jobs} jobs at {args.size} px, {args.iterations} iterations, "
          f"{args.rounds} rounds taking turns; {cpu_model()}, commit {commit}\n")
    print("| inputs | outputs (run folder) | cache | wall time (best) | all rounds | vs local "
          "| local copy of the run folder after |")
    print("|---|---|---|---|---|---|---|")
    server = "S3 (rclone serve s3, 127.0.0.1)"
    for name, inputs, outputs, cache in (
            ("local", "local files", "local folder", "local, filled"),
            ("s3", server, "local folder", "local, filled"),
            ("s3 limit", f"{server}, local copies within a third of their size",
             "local folder", "local, filled"),
            ("s3 out", server, server, "local, filled"),
            ("s3 cache", server, server, "S3, this machine's copy empty")):
        rounds = ", ".join(f"{t:.1f}" for t in times[name])
        copy = (f"{kept[name][0]:.2f} MB, {kept[name][1]} of {args.jobs} outputs"
                if name in kept else "-")
        print(f"| {inputs} | {outputs} | {cache} | {best[name]:.1f} s | {rounds} | "
              f"{best[name] / best['local']:.2f}x | {copy} |")


if __name__ == "__main__":
    main()
