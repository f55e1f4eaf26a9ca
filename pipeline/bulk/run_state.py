"""What a run folder holds: run.json (the last run's manifest, id, jobs and refused rows) and
each job's state read from the ledger and the output files; and, for a run in object storage,
the local copy that is looked at.

`pipeline status`, the report and the run itself decide "done" here, the same way: a job is
done when its output exists and is its own (the ledger's record of writing that very file,
else the key embedded in a file that decodes), so a deleted or replaced output is pending
again everywhere at once.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..io.files import atomic_write_bytes, cache_dir
from ..io.images import carries_key
from ..io.mirror import STATE, attach, is_mirrored, remote_of, remote_size
from ..io.storage import Location, check_store, is_url
from ..io.video import is_video, video_metadata
from ..video.layout import frames_folder, frames_kept
from . import ledger
from .again import Again
from .checkpoint_files import checkpointed
from .locks import Holder

RUN_INFO = "run.json"
DONE, FAILED, PENDING = "done", "failed", "pending"


@dataclass(frozen=True)
class RunInfo:
    manifest: str
    run_id: str
    jobs: tuple[ledger.JobId, ...]
    invalid: dict[int, str] = field(default_factory=dict)  # rows refused at validation
    overrides: dict[str, Any] = field(default_factory=dict)  # --set, as the manifest's rows saw
    started_at: float = 0.0
    started_by: Holder | None = None  # the run's process (none in an older run.json)
    again: Again = field(default_factory=Again)  # what a command resuming it repeats

    @property
    def total(self) -> int:
        return len(self.jobs) + len(self.invalid)


def is_run_folder(folder: Path) -> bool:
    return (folder / RUN_INFO).is_file()


def new_run_id() -> str:
    """The id workers check in run.json, by which a worker elsewhere knows it sees the folder."""
    return uuid.uuid4().hex


def write_run_info(out_dir: Path, run_id: str, manifest: Location, jobs: Sequence[ledger.JobId],
                   invalid: dict[int, str], overrides: dict[str, Any],
                   again: Again | None = None) -> None:
    info = {"manifest": str(manifest if isinstance(manifest, str) else manifest.resolve()),
            "run_id": run_id, "started_at": time.time(), "pid": os.getpid(),
            "host": socket.gethostname(),
            "invalid": [[row, error] for row, error in sorted(invalid.items())],
            "overrides": {k: list(v) if isinstance(v, tuple) else v
                          for k, v in overrides.items()},
            **({"again": dataclasses.asdict(again)} if again else {}),
            "jobs": [list(j) for j in jobs]}
    atomic_write_bytes(out_dir / RUN_INFO, json.dumps(info).encode())


def read_run_info(out_dir: Path) -> RunInfo:
    """run.json, checked field by field: InputError (one line) when it is missing or is not
    what a run writes."""
    path = out_dir / RUN_INFO
    if not path.is_file():  # (a run folder in object storage named by its URL, not its copy)
        raise InputError(f"{remote_of(out_dir) or out_dir}: no {RUN_INFO} here; is this a "
                         "`pipeline run --out` folder?")
    try:
        raw = json.loads(path.read_text())
        invalid = {_int(r): _str(e) for r, e in _typed(raw, "invalid", list)}
        return RunInfo(
            manifest=_typed(raw, "manifest", str), run_id=_typed(raw, "run_id", str),
            jobs=tuple((_str(k), _str(o)) for k, o in _typed(raw, "jobs", list)),
            invalid=invalid,
            overrides=_typed(raw, "overrides", dict),
            started_at=float(_typed(raw, "started_at", (int, float))),
            started_by=(Holder(_typed(raw, "pid", int), _typed(raw, "host", str))
                        if "pid" in raw else None),
            again=_again(raw, invalid))
    except (OSError, ValueError, TypeError, KeyError) as e:
        reason = f"no {e.args[0]!r} field" if isinstance(e, KeyError) else str(e)
        raise InputError(f"{path} is unreadable ({reason or type(e).__name__}); a rerun of "
                         "the manifest rewrites it") from None


def _typed(raw: Any, name: str, kind: type | tuple[type, ...]) -> Any:
    if not isinstance(raw, dict):
        raise TypeError(f"a JSON {type(raw).__name__}, not an object")
    value = raw[name]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise TypeError(f"{name} is a {type(value).__name__}")
    return value


def _again(raw: dict[str, Any], invalid: dict[int, str]) -> Again:
    """run.json's; one written by a run from Python (or by an older version) has none: only
    --skip-bad-rows then, where the run left rows out."""
    if "again" not in raw:
        return Again(("--skip-bad-rows",) if invalid else ())
    given = _typed(raw, "again", dict)
    if not isinstance(hidden := given.get("credentials_left_out"), bool):
        raise TypeError(f"credentials_left_out is a {type(hidden).__name__}")
    return Again(tuple(map(_str, _typed(given, "options", list))), hidden)


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{value!r} is not a string")
    return value


def _int(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{value!r} is not a row number")
    return value


def recorded(output: Path, record: dict[str, Any] | None, fresh: bool = False) -> bool:
    """The ledger's done record is of writing the very file now at `output` (a stat); for a
    run folder in object storage (io/mirror.py), of the bucket's copy (its size, from one
    listing, or with `fresh` asked of the store now): a local copy that never reached the
    bucket is not done."""
    if not (record and record["status"] == ledger.DONE):
        return False
    if is_mirrored(output):
        return (record["output_bytes"] is not None
                and remote_size(output, fresh) == record["output_bytes"])
    return ledger.matches_file(record, output)


def output_is_done(output: Path, key: str, record: dict[str, Any] | None,
                   fresh: bool = False) -> bool:
    """The job's requested output exists and is its own: `recorded`, else (a file the ledger
    never saw, copied or touched since) the file decodes and carries the job's key, and in
    object storage the bucket has it (asked of the store: this is rare)."""
    if recorded(output, record, fresh):
        return True
    if not (output.is_file() and output_carries_key(output, key)):
        return False
    return not is_mirrored(output) or remote_size(output, fresh=True) == output.stat().st_size


def stored_at(path: Path) -> str | None:
    """Where a file of a run folder is, if it is there: its URL for a run folder in object
    storage (the bucket has it), else its path."""
    if is_mirrored(path):
        return remote_of(path) if remote_size(path) is not None else None
    return str(path) if path.is_file() else None


def output_carries_key(output: Path, key: str) -> bool:
    """An image that decodes with `key` embedded, or a video of ours with `key` in its
    metadata (written whole or not at all)."""
    if is_video(output):
        return video_metadata(output).get("job_key") == key
    return carries_key(output, key)


def job_state(out_dir: Path, job: ledger.JobId, record: dict[str, Any] | None) -> str:
    """DONE, FAILED (its latest record failed and no output of its own is there) or PENDING."""
    key, output = job
    if output_is_done(out_dir / output, key, record):
        return DONE
    return FAILED if record is not None and record["status"] == ledger.FAILED else PENDING


@dataclass
class RunState:
    info: RunInfo
    done: int = 0
    records: list[dict[str, Any]] = field(default_factory=list)  # the done jobs' ledger rows
    failed: list[tuple[int, str]] = field(default_factory=list)  # (row, error), with refused rows
    pending: list[ledger.JobId] = field(default_factory=list)


def run_state(out_dir: Path, info: RunInfo) -> RunState:
    """Every job of the folder's last run, and its refused rows, in their present state."""
    records = ledger.read(out_dir)
    state = RunState(info, failed=sorted(info.invalid.items()))
    for job in dict.fromkeys(info.jobs):
        record = records.get(job)
        found = job_state(out_dir, job, record)
        if found == DONE:
            state.done += 1
            if record is not None and record["status"] == ledger.DONE:
                state.records.append(record)
        elif found == FAILED:
            assert record is not None
            state.failed.append((record["row"], record["error"]))
        else:
            state.pending.append(job)
    state.failed.sort()
    return state


@dataclass
class Resumable:
    """What a rerun takes up of the pending jobs: the iteration of each image job's checkpoint,
    and the frames each video job has finished."""

    iterations: list[int] = field(default_factory=list)
    frames: list[int] = field(default_factory=list)


def resumable(out_dir: Path, pending: Sequence[ledger.JobId]) -> Resumable | None:
    """None for a run folder in object storage (`status` does not pull its checkpoints and
    frames to look)."""
    if is_mirrored(out_dir):
        return None
    saved = checkpointed(out_dir) if pending else {}
    found = Resumable()
    for key, output in pending:
        folder = frames_folder(out_dir / output)
        if folder.is_dir():  # a video's (the frame in progress may have a checkpoint too)
            if kept := frames_kept(folder):
                found.frames.append(kept)
        elif key in saved:
            found.iterations.append(saved[key])
    return found


def ledger_only_info(out_dir: Path) -> RunInfo:
    """A RunInfo from the ledger alone, for a folder whose run.json is damaged: its jobs are
    those the ledger recorded."""
    records = ledger.read(out_dir)
    return RunInfo(manifest="unknown (run.json unreadable)", run_id="",
                   jobs=tuple(j for j, r in records.items() if r["status"] != ledger.INVALID))


def run_folder(out: str) -> Path:
    """A run folder to look at (`pipeline status`, `report`): the path, or this machine's copy
    of one in object storage with the run's records pulled (what is written there is
    uploaded)."""
    return mirrored_folder(out, None, ("run.json", "ledger", "traces")) if is_url(out) else (
        Path(out).expanduser())


def mirrored_folder(url: str, cache: str | None, parts: tuple[str, ...] = STATE) -> Path:
    """The local folder a run into `url` works in, with the run's state (`parts` of it) pulled
    from the bucket and every file written there uploaded (io/mirror.py)."""
    check_store(url)
    return attach(url, cache_dir(cache), parts)
