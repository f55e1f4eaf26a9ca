"""Loss traces: each job's loss terms every few iterations, as Parquet keyed by job key.

A run keeps them under <out>/traces/, one part per batch, written by the worker before the
batch's outputs: a job whose output exists always has its trace. A batch run again (killed
between the two writes, or retried) writes its jobs' whole traces again, from iteration 0 (the
checkpoint carries the trace so far), so reading keeps the latest part's trace of each job and
never merges two.
"""

from __future__ import annotations

import logging
import time
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ..gatys.trace import TERMS
from ..io.files import atomic_path

log = logging.getLogger("pipeline.run")

SCHEMA = pa.schema([("key", pa.string()), ("iteration", pa.int64()), ("stage", pa.int64()),
                    *((name, pa.float64()) for name in TERMS)])
Traces = dict[str, list[dict[str, Any]]]  # job key -> points in iteration order


def trace_dir(out_dir: Path) -> Path:
    return out_dir / "traces"


def write(path: Path, traces: Traces) -> None:
    """One Parquet file of these traces, atomically."""
    rows = [{"key": key, **point} for key, points in traces.items() for point in points]
    with atomic_path(path) as tmp:
        pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), tmp)


def append(out_dir: Path, traces: Traces) -> None:
    """A part of the run's traces (nothing when no job has a trace)."""
    if any(traces.values()):
        write(trace_dir(out_dir) / f"part-{time.time_ns()}-{uuid.uuid4().hex[:8]}.parquet",
              traces)


def read_file(path: Path) -> Traces:
    traces: Traces = {}
    for row in pq.read_table(path).to_pylist():
        traces.setdefault(row.pop("key"), []).append(row)
    return traces


def read(out_dir: Path) -> Traces:
    """Each job's trace from the latest part that has it; an unreadable part is skipped with
    a warning."""
    folder = trace_dir(out_dir)
    latest: Traces = {}
    for part in sorted(folder.glob("part-*.parquet")) if folder.is_dir() else []:
        try:
            latest.update(read_file(part))
        except (pa.ArrowException, OSError) as e:
            log.warning("trace part %s is unreadable (%s); skipped", part.name,
                        str(e).splitlines()[0] if str(e) else type(e).__name__)
    return latest
