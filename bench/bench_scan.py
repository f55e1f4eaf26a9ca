"""The check of a manifest whose images are in a bucket, once their digests are remembered (a
rerun): the objects' versions from their folder's listing against a HEAD request each.

A real S3 server on 127.0.0.1 (`rclone serve s3`, tests/s3_server.py) over a temporary folder
holding `--objects` tiny PNGs in one folder and a style image beside it, reached directly
(round trip well under a millisecond) and through a proxy that holds each request back by
`--rtt-ms` (a store in another building: S3 from a machine of the same region answers a
small request in about that). Two manifests of the same rows, content x the style: in the
bucket's key order (as `pipeline manifest build` writes them) and shuffled. The run's check
(`scan(decode=False)`, what `pipeline run` does before its workers start) and `pipeline
manifest validate`'s (`decode=True`: every image downloaded and decoded; its copies kept
between rounds) are timed in this process, with listing off (every object by HEAD, 16 at
once) and on, each configuration in turn per round after an untimed scan that fills the
cache; best wall time and the CPU time of that round.

Usage: python -m bench.bench_scan [--objects 3000] [--rtt-ms 0,20] [--rounds 3]
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import resource
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.accel.machine import cpu_model
from pipeline.bulk.manifest import write_manifest
from pipeline.bulk.scan import scan
from pipeline.io import listing, storage
from tests.s3_server import KEY, SECRET, free_port, serve_s3

from .arguments import parser


def delaying_proxy(target: int, delay_s: float) -> int:
    """A port on 127.0.0.1 that forwards to `target`, holding each chunk a client sends back
    by `delay_s` (a daemon thread's event loop)."""
    port = free_port()
    started = threading.Event()

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                   delay: float) -> None:
        try:
            while data := await reader.read(65536):
                await asyncio.sleep(delay)
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    async def connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        to_reader, to_writer = await asyncio.open_connection("127.0.0.1", target)
        await asyncio.gather(pipe(reader, to_writer, delay_s), pipe(to_reader, writer, 0))

    async def serve() -> None:
        server = await asyncio.start_server(connect, "127.0.0.1", port)
        started.set()
        async with server:
            await server.serve_forever()

    threading.Thread(target=lambda: asyncio.run(serve()), daemon=True).start()
    started.wait(10)
    return port


def bucket(root: Path, objects: int) -> None:
    folder = root / "bucket" / "photos"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(objects):
        Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(
            folder / f"p{i:06d}.png")
    Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(
        root / "bucket" / "style.png")


def manifests(work: Path, objects: int) -> dict[str, Path]:
    rows = [{"content": f"s3://bucket/photos/p{i:06d}.png", "style": "s3://bucket/style.png",
             "size": 32} for i in range(objects)]
    shuffled = rows[:]
    random.Random(0).shuffle(shuffled)
    return {"key order": write_manifest(rows, work / "sorted.parquet"),
            "shuffled": write_manifest(shuffled, work / "shuffled.parquet")}


LISTING = listing.WORTH_LISTING


def timed(manifest: Path, out: Path, decode: bool, listed: bool) -> tuple[float, float]:
    """(wall, CPU) seconds of one check."""
    listing.WORTH_LISTING = LISTING if listed else 10**9
    before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    found = scan(manifest, out, {}, decode=decode)
    wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
    assert not found.errors, found.errors[:3]
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)



def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--objects", type=int, default=3000)
    ap.add_argument("--rtt-ms", default="0,20", help="comma-separated request delays")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    print(f"CPU: {cpu_model()}, {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        bucket(work / "s3", args.objects)
        os.environ["STYLE_PIPELINE_CACHE"] = str(work / "cache")
        made = manifests(work, args.objects)
        with serve_s3(work / "s3") as endpoint:
            server = int(endpoint.rsplit(":", 1)[1])
            print("| round trip added | manifest order | check | HEAD per object: best "
                  "wall (CPU) | listing: best wall (CPU) | listing vs HEADs |")
            print("|---|---|---|---|---|---|")
            for rtt in (float(ms) for ms in args.rtt_ms.split(",")):
                port = delaying_proxy(server, rtt / 1000) if rtt else server
                os.environ[storage.ENV_OPTIONS] = json.dumps(
                    {"endpoint_url": f"http://127.0.0.1:{port}", "key": KEY, "secret": SECRET})
                storage._filesystem.cache_clear()
                for order, manifest in made.items():
                    for decode, check in ((False, "`pipeline run`"),
                                          (True, "`manifest validate`")):
                        timed(manifest, work / "out", decode, listed=True)  # cache filled
                        best: dict[bool, tuple[float, float]] = {}
                        for r in range(args.rounds):
                            for listed in ((False, True) if r % 2 == 0 else (True, False)):
                                got = timed(manifest, work / "out", decode, listed)
                                best[listed] = min(best.get(listed, got), got)
                        (hw, hc), (lw, lc) = best[False], best[True]
                        print(f"| {rtt:g} ms | {order} | {check} | {hw:.2f} s ({hc:.2f} s) | "
                              f"{lw:.2f} s ({lc:.2f} s) | **{hw / lw:.2f}x** |", flush=True)


if __name__ == "__main__":
    main()
