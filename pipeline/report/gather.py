"""What a report shows, read from a run folder: every manifest row with its state, the ledger's
numbers, the loss traces and the intermediate images.

The manifest is read again (with the run's --set overrides from run.json) so that pending rows
and rows that never became jobs are shown too. A row's job is found by its output path in
run.json, and its state is decided as `pipeline status` and the run decide it (run_state): done
only while its output is there and is its own. A record counts only when it was made with the
row's present parameters. Without a readable manifest the run's jobs alone are shown.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..bulk import ledger, traces
from ..bulk.manifest import (
    REGION_COLUMNS,
    VIDEO_COLUMNS,
    RealPaths,
    read_rows,
    row_inputs,
    row_to_job,
)
from ..bulk.run_state import DONE, FAILED, PENDING, RunInfo, job_state, read_run_info
from ..errors import InputError, RowError
from ..gatys.params import StyleParams
from ..gatys.trace import Points
from ..io.images import intermediates_beside
from ..io.mirror import remote_files
from ..io.storage import location, parent
from ..io.video import is_video
from ..video.params import VideoParams

__all__ = ["DONE", "FAILED", "PENDING", "JobView", "RunView", "gather", "same_result"]


@dataclass
class JobView:
    row: int
    content: Path
    styles: tuple[Path, ...]
    params: dict[str, Any]           # as the ledger records them (JobSpec.settings)
    output: Path | None              # None: the row never became a job
    status: str                      # done, failed, pending
    error: str = ""
    record: dict[str, Any] = field(default_factory=dict)  # its ledger row, if any
    trace: Points | None = None
    intermediates: list[tuple[int, Path]] = field(default_factory=list)
    video: bool = False              # a video job: its trace has a point per frame
    masks: tuple[Path, ...] = ()     # its content masks (or segmentation), shown beside it


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


def gather(out_dir: Path, carries: Callable[[Path, str], bool] | None = None,
           info: RunInfo | None = None) -> RunView:
    """The run's view; `carries(path, key)`: whether an intermediate image is of the job of
    `key` (io/images.intermediates_beside; the report's thumbnails know it). `info`: the
    run's run.json, when the caller has read it."""
    info = info or read_run_info(out_dir)
    records = ledger.read(out_dir)
    try:
        jobs = _from_manifest(out_dir, info, records)
        note = ""
    except InputError as e:
        jobs = _from_run_info(out_dir, info, records)
        note = f"the manifest could not be read ({e}); showing the run's jobs only"
    found = traces.read(out_dir)
    beside = intermediates_beside(((job.output, job.record["key"]) for job in jobs
                                   if job.output is not None and job.record.get("key")),
                                  _names, carries)
    for job in jobs:
        job.trace = found.get(job.record.get("key", ""))
        job.intermediates = beside.get(job.output, []) if job.output is not None else []
    return RunView(out_dir, info.manifest, jobs, note)


def _names(folder: Path) -> set[str]:
    """A folder's files here and, in a run folder in a bucket, there: a run keeps no copy of
    its intermediate images, as of its outputs."""
    here = os.listdir(folder) if folder.is_dir() else []
    return {*here, *(path.name for path in remote_files(folder))}


def _from_manifest(out_dir: Path, info: RunInfo, records: dict[ledger.JobId, dict[str, Any]]
                   ) -> list[JobView]:
    manifest = location(info.manifest)
    base = parent(manifest) if isinstance(manifest, str) else manifest.resolve().parent
    out_dir = out_dir.resolve()
    overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in info.overrides.items()}
    keys = {output: key for key, output in info.jobs}
    real = RealPaths()  # each folder resolved once, as the run's scan does
    jobs = []
    for index, row in read_rows(manifest):
        try:
            if index in info.invalid:
                raise RowError(index, info.invalid[index])
            spec = row_to_job(row, index, base, out_dir, overrides, real)
        except RowError as e:
            inputs = row_inputs(row, base, overrides)
            jobs.append(JobView(row=index, content=inputs[0] if inputs else base / "?",
                                styles=tuple(inputs[1:]), params={}, output=None,
                                status=FAILED, error=e.reason))
            continue
        job = (keys.get(spec.output_name, ""), spec.output_name)
        record = records.get(job)
        if record is not None and not same_result(json.loads(record["params"]), spec.params,
                                                  spec.video):
            record = None  # made with other parameters: this row's job has not run
        status = job_state(out_dir, job, record) if job[0] else PENDING
        jobs.append(JobView(row=index, content=spec.content, styles=spec.styles,
                            params=spec.settings(), output=spec.output, status=status,
                            error=record["error"] if status == FAILED and record else "",
                            record=record if record and status != PENDING else {},
                            video=spec.video is not None, masks=_masks(spec.settings())))
    return jobs


def same_result(recorded: dict[str, Any], params: StyleParams,
                video: VideoParams | None = None) -> bool:
    """The recorded options make the image (or video) that `params` (and `video`) make, as
    job keys see it: a record of other or unknown options does not."""
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in recorded.items()
              if k not in REGION_COLUMNS}  # the regions' files are in the job key
    video_values = {k: values.pop(k) for k in VIDEO_COLUMNS if k in values}
    try:
        made = StyleParams(**values)
        made_video = VideoParams(**video_values) if video_values else None
    except TypeError:
        return False
    return (made.result_dict() == params.result_dict() and (made_video is None) == (video is None)
            and (video is None or made_video.to_dict() == video.to_dict()))


def _from_run_info(out_dir: Path, info: RunInfo,
                   records: dict[ledger.JobId, dict[str, Any]]) -> list[JobView]:
    """The run's jobs as run.json and the ledger know them, when the manifest is gone."""
    jobs = []
    for job in dict.fromkeys(info.jobs):
        record = records.get(job, {})
        status = job_state(out_dir, job, record or None)
        jobs.append(JobView(row=record.get("row", -1),
                            content=Path(record.get("content") or "?"),
                            styles=tuple(Path(s) for s in record.get("styles") or []),
                            params=json.loads(record.get("params") or "{}"),
                            output=out_dir / job[1], status=status,
                            error=record.get("error", "") if status == FAILED else "",
                            record=record, video=is_video(job[1]),
                            masks=_masks(json.loads(record.get("params") or "{}"))))
    return jobs


def _masks(settings: dict[str, Any]) -> tuple[Path, ...]:
    """A job's content masks, or its segmentation, from its recorded settings."""
    masks = settings.get("masks") or ([settings["segmentation"]]
                                      if settings.get("segmentation") else [])
    return tuple(Path(m) for m in masks)
