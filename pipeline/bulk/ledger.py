"""The results ledger: one Parquet row per finished or failed job, under <out>/ledger/.

Each worker writes its own part files (one per batch, atomically), so nothing is lost if the
parent process dies, and no two processes ever write the same file. Reading takes the latest
row per job, a job being its key and its output (relative to --out, so a copied run folder
stays valid): a retried job's success replaces its earlier failure. A part that cannot be read
is skipped with a warning (and moved aside by a run); what it held is rebuilt from the keys
embedded in the outputs, or run again.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from ..io.files import atomic_path
from ..io.video import is_video
from .parts import part_name, read_parts

if TYPE_CHECKING:
    from .jobs import Job

log = logging.getLogger("pipeline.run")

SCHEMA = pa.schema([
    ("key", pa.string()), ("row", pa.int64()), ("status", pa.string()),
    ("content", pa.string()), ("styles", pa.list_(pa.string())), ("output", pa.string()),
    ("params", pa.string()), ("loss_total", pa.float64()), ("loss_content", pa.float64()),
    ("loss_style", pa.float64()), ("loss_tv", pa.float64()), ("iterations", pa.int64()),
    ("seconds", pa.float64()), ("device", pa.string()), ("error", pa.string()),
    ("started_at", pa.float64()), ("finished_at", pa.float64()),
    # The output file as written (size, mtime): a rerun trusts a done row whose file still
    # matches, and decodes the file to check its embedded key otherwise.
    ("output_bytes", pa.int64()), ("output_mtime_ns", pa.int64()),
    ("precision", pa.string()),  # the runtime's: fp32, bf16 (the trunk) or fp64
    ("resumed_from", pa.int64()),  # the iteration its checkpoint gave it; 0: from the start
])
DONE, FAILED, INVALID = "done", "failed", "invalid"
QUARANTINE = "quarantine"

JobId = tuple[str, str]  # (job key, output relative to --out)


def ledger_dir(out_dir: Path) -> Path:
    return out_dir / "ledger"


def make_row(key: str, row: int, status: str, started_at: float, *, content: str = "",
             styles: Sequence[str] = (), output: str = "", params: dict[str, Any] | None = None,
             device: str = "", losses: dict[str, float] | None = None, iterations: int = 0,
             seconds: float = 0.0, error: str = "", written: Path | None = None,
             precision: str = "", resumed_from: int = 0) -> dict[str, Any]:
    """One ledger row. `written`: the output file just written, whose size and mtime are
    recorded."""
    losses = losses or {}
    stat = written.stat() if written is not None else None
    return {"key": key, "row": row, "status": status, "content": content, "styles": list(styles),
            "output": output, "params": json.dumps(params or {}, sort_keys=True),
            "loss_total": losses.get("total"), "loss_content": losses.get("content"),
            "loss_style": losses.get("style"), "loss_tv": losses.get("tv"),
            "iterations": iterations, "seconds": seconds, "device": device, "error": error,
            "started_at": started_at, "finished_at": time.time(),
            "output_bytes": stat.st_size if stat else None,
            "output_mtime_ns": stat.st_mtime_ns if stat else None, "precision": precision,
            "resumed_from": resumed_from}


def job_row(job: Job, status: str, started_at: float, device: str = "", **kw: Any
            ) -> dict[str, Any]:
    """make_row for a job of a run: its key, row, paths and parameters."""
    spec = job.spec
    return make_row(job.key, spec.row, status, started_at, content=str(spec.content),
                    styles=[str(s) for s in spec.styles], output=spec.output_name,
                    params=spec.settings(), device=device, **kw)


def matches_file(row: dict[str, Any], path: Path) -> bool:
    """The file at `path` is still the one this done row recorded writing."""
    try:
        stat = path.stat()
    except OSError:
        return False
    return (row["output_bytes"], row["output_mtime_ns"]) == (stat.st_size, stat.st_mtime_ns)


def rate(count: int, seconds: float, videos: bool) -> str:
    """Outputs per hour, named for what they are: a video is one output, however many frames."""
    return f"{count / seconds * 3600:,.0f} {'outputs' if videos else 'images'}/hour"


def any_video(rows: list[dict[str, Any]]) -> bool:
    return any(is_video(r["output"]) for r in rows)


def throughput(done: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], float] | None:
    """(the done rows that ran here, seconds from their first start to their last finish); a
    row recovered from its output file did not run. None when none did."""
    timed = [r for r in done if r["seconds"]]
    if not timed:
        return None
    span = max(r["finished_at"] for r in timed) - min(r["started_at"] for r in timed)
    return timed, max(span, 1e-9)


def append(out_dir: Path, rows: list[dict[str, Any]], part: str = "") -> None:
    """A part of these rows; `part`: that part's name, rewritten whole (a batch in slots
    writes its rows so far as each job ends)."""
    if not rows:
        return
    dest = ledger_dir(out_dir) / (part or part_name())
    with atomic_path(dest) as tmp:
        pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), tmp)


def read(out_dir: Path, quarantine: bool = False) -> dict[JobId, dict[str, Any]]:
    """Latest row per job. A part that does not read is skipped with a warning, and with
    `quarantine` (the caller holds the run lock) moved to ledger/quarantine/."""
    folder = ledger_dir(out_dir)
    empty = dict.fromkeys(SCHEMA.names)  # parts written before a column was added lack it
    latest: dict[JobId, dict[str, Any]] = {}
    for part, table in read_parts(folder):
        if isinstance(table, str):  # why it is unreadable
            if quarantine:
                (folder / QUARANTINE).mkdir(exist_ok=True)
                part.rename(folder / QUARANTINE / part.name)
                log.warning("ledger part %s is unreadable (%s): moved to %s/; its jobs are "
                            "taken from their outputs or run again", part.name, table,
                            QUARANTINE)
            else:
                log.warning("ledger part %s is unreadable (%s); skipped", part.name, table)
            continue
        for row in table.to_pylist():
            row = {**empty, **row}
            latest[(row["key"], row["output"])] = row
    return latest
