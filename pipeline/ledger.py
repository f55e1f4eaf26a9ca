"""The results ledger: one Parquet row per finished or failed job, under <out>/ledger/.

Each worker writes its own part files (one per batch, atomically), so nothing is lost if the
parent process dies, and no two processes ever write the same file. Reading takes the latest
row per job key: a retried job's success replaces its earlier failure.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from .files import atomic_path

if TYPE_CHECKING:
    from .jobs import Job

SCHEMA = pa.schema([
    ("key", pa.string()), ("row", pa.int64()), ("status", pa.string()),
    ("content", pa.string()), ("styles", pa.list_(pa.string())), ("output", pa.string()),
    ("params", pa.string()), ("loss_total", pa.float64()), ("loss_content", pa.float64()),
    ("loss_style", pa.float64()), ("loss_tv", pa.float64()), ("iterations", pa.int64()),
    ("seconds", pa.float64()), ("device", pa.string()), ("error", pa.string()),
    ("started_at", pa.float64()), ("finished_at", pa.float64()),
])
DONE, FAILED, INVALID = "done", "failed", "invalid"


def ledger_dir(out_dir: Path) -> Path:
    return out_dir / "ledger"


def make_row(key: str, row: int, status: str, content: str, styles: list[str], output: str,
             params: dict[str, Any] | None, started_at: float, device: str = "",
             losses: dict[str, float] | None = None, iterations: int = 0,
             seconds: float = 0.0, error: str = "") -> dict[str, Any]:
    losses = losses or {}
    return {"key": key, "row": row, "status": status, "content": content, "styles": styles,
            "output": output, "params": json.dumps(params or {}, sort_keys=True),
            "loss_total": losses.get("total"), "loss_content": losses.get("content"),
            "loss_style": losses.get("style"), "loss_tv": losses.get("tv"),
            "iterations": iterations, "seconds": seconds, "device": device, "error": error,
            "started_at": started_at, "finished_at": time.time()}


def job_row(job: Job, status: str, started_at: float, device: str = "", **kw: Any
            ) -> dict[str, Any]:
    """make_row for a job of a run: its key, row, paths and parameters."""
    spec = job.spec
    return make_row(job.key, spec.row, status, str(spec.content), [str(s) for s in spec.styles],
                    str(spec.output), spec.params.to_dict(), started_at, device, **kw)


def append(out_dir: Path, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    dest = ledger_dir(out_dir) / f"part-{time.time_ns()}-{uuid.uuid4().hex[:8]}.parquet"
    with atomic_path(dest) as tmp:
        pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), tmp)


def read(out_dir: Path) -> dict[str, dict[str, Any]]:
    """Latest row per job key."""
    folder = ledger_dir(out_dir)
    parts = sorted(folder.glob("part-*.parquet")) if folder.is_dir() else []
    latest: dict[str, dict[str, Any]] = {}
    for part in parts:  # names sort by write time
        for row in pq.read_table(part, schema=SCHEMA).to_pylist():
            latest[row["key"]] = row
    return latest
