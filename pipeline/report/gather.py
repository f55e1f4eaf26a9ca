"""What a report shows, read from a run folder: every manifest row with its state, the ledger's
numbers, the loss traces and the intermediate images.

The manifest is read again (with the run's --set overrides from run.json) so that pending rows
and rows that never became jobs are shown too; a row's ledger entry is found by its output
path, and counts only when it was made with the row's present parameters. Without a readable
manifest the ledger alone is shown.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..bulk import ledger, traces
from ..bulk.manifest import read_rows, row_to_job
from ..errors import InputError, RowError
from ..gatys.params import StyleParams
from ..io.images import intermediates

DONE, FAILED, PENDING = "done", "failed", "pending"


@dataclass
class JobView:
    row: int
    content: Path
    styles: tuple[Path, ...]
    params: dict[str, Any]           # as the ledger and outputs record them (StyleParams.to_dict)
    output: Path | None              # None: the row never became a job
    status: str                      # done, failed, pending
    error: str = ""
    record: dict[str, Any] = field(default_factory=dict)  # its ledger row, if any
    trace: list[dict[str, Any]] = field(default_factory=list)
    intermediates: list[tuple[int, Path]] = field(default_factory=list)


@dataclass
class RunView:
    out_dir: Path
    manifest: str
    jobs: list[JobView]
    note: str = ""                   # why the view is partial, if it is
    generated_at: float = field(default_factory=time.time)

    def count(self, status: str) -> int:
        return sum(1 for j in self.jobs if j.status == status)

    @property
    def done_records(self) -> list[dict[str, Any]]:
        return [j.record for j in self.jobs if j.status == DONE and j.record]


def read_run_info(out_dir: Path) -> dict[str, Any]:
    path = out_dir / "run.json"
    if not path.is_file():
        raise InputError(f"{out_dir}: no run.json here; is this a `pipeline run --out` folder?")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: unreadable ({type(e).__name__}); a rerun of the manifest "
                         "rewrites it") from None


def gather(out_dir: Path) -> RunView:
    info = read_run_info(out_dir)
    records = ledger.read(out_dir)
    by_output = {out: r for (_, out), r in records.items() if r["status"] != ledger.INVALID}
    invalid = {r["row"]: r["error"] for r in records.values() if r["status"] == ledger.INVALID}
    manifest = Path(info.get("manifest", ""))
    try:
        jobs = _from_manifest(manifest, out_dir, info.get("overrides", {}), by_output, invalid)
        note = ""
    except InputError as e:
        jobs = [_from_record(out_dir, r) for r in by_output.values()]
        note = f"the manifest could not be read ({e}); showing the ledger's jobs only"
    found = traces.read(out_dir)
    for job in jobs:
        job.trace = found.get(job.record.get("key", ""), [])
        if job.output is not None:
            job.intermediates = intermediates(job.output)
    return RunView(out_dir, str(manifest), jobs, note)


def _from_manifest(manifest: Path, out_dir: Path, overrides: dict[str, Any],
                   by_output: dict[str, dict[str, Any]], invalid: dict[int, str]
                   ) -> list[JobView]:
    base = manifest.resolve().parent
    out_dir = out_dir.resolve()
    overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}
    jobs = []
    for index, row in read_rows(manifest):
        try:
            spec = row_to_job(row, index, base, out_dir, overrides)
        except RowError as e:
            style = row.get("style")
            styles = [style] if isinstance(style, str) else list(style or [])
            jobs.append(JobView(index, base / str(row.get("content") or "?"),
                                tuple(base / str(s) for s in styles), {}, None, FAILED,
                                invalid.get(index, str(e))))
            continue
        params = spec.params.to_dict()
        record = by_output.get(spec.output_name)
        if record is not None and not same_result(json.loads(record["params"]), spec.params):
            record = None  # made with other parameters: this row's job has not run
        status = PENDING if record is None else (
            DONE if record["status"] == ledger.DONE else FAILED)
        jobs.append(JobView(index, spec.content, spec.styles, params, spec.output, status,
                            (record or {}).get("error", "") if status == FAILED else "",
                            record or {}))
    return jobs


def same_result(recorded: dict[str, Any], params: StyleParams) -> bool:
    """The recorded parameters make the image `params` make (as job keys see it). A record
    written before a parameter existed lacks it: tol then was 0 (no early stopping)."""
    known = {k: tuple(v) if isinstance(v, list) else v for k, v in recorded.items()
             if k in StyleParams.__dataclass_fields__}
    try:
        made = StyleParams(**{"tol": 0.0, **known})
    except TypeError:
        return False
    return made.result_dict() == params.result_dict()


def _from_record(out_dir: Path, record: dict[str, Any]) -> JobView:
    status = DONE if record["status"] == ledger.DONE else FAILED
    params = json.loads(record["params"]) or StyleParams().to_dict()
    return JobView(record["row"], Path(record["content"]),
                   tuple(Path(s) for s in record["styles"]), params,
                   out_dir / record["output"], status,
                   record["error"] if status == FAILED else "", record)
