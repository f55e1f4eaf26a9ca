"""A manifest's check (`pipeline manifest validate`, and `pipeline run` before anything is
written): every row made a job and inspected, what it needs of its inputs in object storage
asked ahead, outputs that clash found. Imports no torch: a check loads none."""

from __future__ import annotations

import itertools
import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..errors import InputError, RowError
from ..io.files import cache_dir
from ..io.mirror import staging_folder
from ..io.objects import ImageObject, fetch_copies
from ..io.storage import Location, object_identity
from .jobs import Inspector, Job
from .manifest import JobSpec, read_jobs

# Rows whose objects are asked at once (io/fetch.py): enough to keep its threads busy.
AHEAD = 256


def _asked_ahead(items: Iterator[JobSpec | RowError], inspect: Inspector
                 ) -> Iterator[JobSpec | RowError]:
    """`items` as they come, each run of AHEAD with what the inspector needs of its inputs in
    object storage asked first, concurrently (io/objects.scan_ahead)."""
    while chunk := list(itertools.islice(items, AHEAD)):
        specs = [spec for spec in chunk if isinstance(spec, JobSpec)]
        videos = [spec.content for spec in specs if spec.video is not None]
        images = [f for spec in specs  # (a video's content is no image)
                  for f in (spec.inputs[1:] if spec.video is not None else spec.inputs)]
        inspect.ask_ahead(images, videos)
        yield from chunk


@dataclass
class Scan:
    jobs: list[Job]
    errors: list[RowError]
    objects: dict[str, ImageObject] = field(default_factory=dict)  # image objects, by URL


def fetch_inputs(found: Scan, jobs: Iterable[Job]) -> None:
    """The local copies of the `jobs`' image objects, for the workers of this machine, at
    once (a scan reads none of those it remembers: io/objects.py)."""
    fetch_copies(found.objects[f] for job in jobs for f in job.spec.inputs
                 if isinstance(f, str) and f in found.objects)


def scan(manifest: Location, out: Location, overrides: dict[str, Any],
         progress: Callable[[int], None] | None = None, decode: bool = True,
         cache: str | None = None) -> Scan:
    """Every row checked: columns, types, ranges, files exist and decode (or, with
    decode=False, have a readable header), outputs inside --out, not duplicated and not any
    row's input. `cache`: where digests are remembered. `out` at a URL: the outputs are
    named in this machine's copy of that run folder (mirror.staging_folder; nothing is made
    here) and checked against the input objects by the objects they are uploaded to. What is
    needed of inputs in object storage is asked AHEAD rows at a time, concurrently, before
    those rows are checked."""
    remote = out if isinstance(out, str) else None
    out_dir = staging_folder(out, cache_dir(cache)) if isinstance(out, str) else out
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"--out {out_dir} is a file, not a folder")
    inspect = Inspector(decode, cache)
    jobs: list[Job] = []
    errors: list[RowError] = []
    outputs: dict[Path, JobSpec] = {}
    inputs: dict[Location, int] = {}
    for item in _asked_ahead(read_jobs(manifest, out_dir, overrides, inputs), inspect):
        if progress is not None:
            progress(1)
        if isinstance(item, RowError):
            errors.append(item)
            continue
        try:
            job = inspect(item)
        except RowError as e:
            errors.append(e)
            continue
        if (first := outputs.setdefault(item.output, item)) is not item:
            errors.append(RowError(item.row, f"output {item.output_name} duplicates row "
                                   f"{first.row}" + _clash_hint(first, item)))
            continue
        jobs.append(job)
    # Only now: a later row may read what an earlier row would write.
    replaces = _replaced(out_dir, remote)
    reader = {job.spec.row: row for job in jobs
              if (row := inputs.get(replaces(job.spec.output))) is not None}
    errors += [RowError(job.spec.row, f"output {job.spec.output_name} is an input image of "
                                      f"row {reader[job.spec.row]}; it would be overwritten")
               for job in jobs if job.spec.row in reader]
    jobs = [job for job in jobs if job.spec.row not in reader]
    errors.sort(key=lambda e: e.row)
    return Scan(_single_contents_uncached(jobs), errors, inspect.objects)


def _replaced(out_dir: Path, remote: str | None) -> Callable[[Path], Location]:
    """What writing an output replaces: its file, or in a run folder in object storage the
    object it is uploaded to (an input of the same bucket)."""
    if remote is None:
        return lambda output: output
    here = Path(os.path.realpath(out_dir))
    return lambda output: object_identity(f"{remote}/{output.relative_to(here).as_posix()}")


def _single_contents_uncached(jobs: list[Job]) -> list[Job]:
    """A content that one job alone reads keeps its targets out of the disk cache: a run of
    a dataset's images would otherwise leave each one's features there (several MB an image,
    more than the image), to save a forward pass, less than one of its iterations, where
    its job is resumed. A content with several styles or settings keeps them."""
    uses = Counter(job.spec.content for job in jobs)
    return [job if uses[job.spec.content] > 1 else replace(job, cache_content=False)
            for job in jobs]


def _clash_hint(first: JobSpec, later: JobSpec) -> str:
    """Where two rows of other inputs land on one name: default names are made of the files'
    names, so x/photo.jpg and y/photo.jpg clash without an output column."""
    if (first.content, first.styles) == (later.content, later.styles):
        return ""
    return (", whose other inputs have the same file names: give an output column (or make "
            "the manifest with `pipeline manifest build`, which names them apart)")
