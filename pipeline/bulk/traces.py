"""Loss traces: each job's loss terms every few iterations, as Parquet keyed by job key.

A run keeps them under <out>/traces/, one part per batch, written by the worker before the
batch's outputs: a job whose output exists always has its trace. A batch run again (killed
between the two writes, or retried) writes its jobs' whole traces again, from iteration 0 (the
checkpoint carries the trace so far), so reading keeps the latest part's trace of each job and
never merges two.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ..gatys.trace import Points, Traces, traces_of, write_traces
from .parts import part_name, read_parts

log = logging.getLogger("pipeline.run")


def trace_dir(out_dir: Path) -> Path:
    return out_dir / "traces"


def append(out_dir: Path, traces: Traces, part: str = "") -> None:
    """A part of the run's traces (nothing when no job has a trace); `part`: as
    ledger.append's."""
    if any(traces.values()):
        write_traces(trace_dir(out_dir) / (part or part_name()), traces)


def read(out_dir: Path) -> dict[str, Points]:
    """Each job's trace from the latest part that has it; an unreadable part is skipped with
    a warning."""
    latest: dict[str, Points] = {}
    for part, table in read_parts(trace_dir(out_dir)):
        if isinstance(table, str):
            log.warning("trace part %s is unreadable (%s); skipped", part.name, table)
            continue
        latest.update(traces_of(table))
    return latest
