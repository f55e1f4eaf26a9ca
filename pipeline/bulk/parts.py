"""Parquet parts: the ledger's and the loss traces' files under a run folder, one a batch (in
slots: one a run of slots, rewritten as its jobs end), named to sort by the time they were
started and read in that order, so that a job's latest part wins."""

from __future__ import annotations

import time
import uuid
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

# A large run leaves thousands of small parts, each read mostly in fixed costs (opening, the
# footer) that a few threads overlap; more than this only contend.
READERS = 4


def part_name() -> str:
    """A new part's name: parts sort by the time they were started."""
    return f"part-{time.time_ns()}-{uuid.uuid4().hex[:8]}.parquet"


def read_parts(folder: Path) -> Iterator[tuple[Path, pa.Table | str]]:
    """Each part in `folder` in the order written, with its table or, in one line, why it
    could not be read."""
    parts = sorted(folder.glob("part-*.parquet")) if folder.is_dir() else []
    with ThreadPoolExecutor(READERS) as pool:
        ahead: deque[tuple[Path, Future[pa.Table | str]]] = deque()
        for part in parts:  # a few parts ahead, not all: a run's traces take GBs as tables
            ahead.append((part, pool.submit(_read, part)))
            if len(ahead) > 2 * READERS:
                oldest, read = ahead.popleft()
                yield oldest, read.result()
        for oldest, read in ahead:
            yield oldest, read.result()


def _read(part: Path) -> pa.Table | str:
    # ParquetFile, not read_table: on parts this small read_table's dataset layer costs more
    # than the read (BENCHMARKS.md, "Manifests").
    try:
        with pq.ParquetFile(part) as parquet:
            return parquet.read(use_threads=False)
    except (pa.ArrowException, OSError) as e:
        return str(e).splitlines()[0] if str(e) else type(e).__name__
