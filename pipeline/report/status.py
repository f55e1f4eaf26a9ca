"""`pipeline status`'s work, for the command and the Python API alike: a run folder's jobs in
their present state (decided as the run decides it, bulk/run_state.py), the run going on (its
process, and when it ends at its pace), what a rerun takes up of the pending jobs, and the
command that resumes them where no run said it (after a crash or a reboot)."""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from typing import Any

from ..bulk import ledger
from ..bulk.again import set_items
from ..bulk.locks import Holder, holder
from ..bulk.run_state import (
    RUN_INFO,
    Resumable,
    RunInfo,
    RunState,
    ledger_only_info,
    read_run_info,
    resumable,
    run_folder,
    run_state,
    stored_at,
)
from ..errors import InputError
from ..io.files import shown
from ..io.storage import is_url
from .page import REPORT

log = logging.getLogger("pipeline.run")

Rows = list[dict[str, Any]]


@dataclass(frozen=True)
class RunStatus:
    """A run folder as `pipeline status` shows it; `as_dict()` is its `--json`."""

    info: RunInfo
    state: RunState
    found: Resumable | None  # None for a folder in object storage (not looked at)
    ran: tuple[Rows, float] | None  # ledger.throughput of the done jobs
    report: str | None  # where the report is, if there is one
    running: Holder | None  # the run that holds the folder
    known: bool  # whether this machine can tell (a lock on another machine's NFS: not)
    checking: bool  # the run holding it still checks its manifest (run.json is the last one's)
    eta: tuple[float, Rows] | None  # (seconds left, the jobs this run has done) at its pace
    resume: str | None  # the command that resumes the pending jobs, while no run goes on

    def throughput(self) -> dict[str, Any] | None:
        """Of the done jobs that ran: their rate, span, mean time per batch run, devices."""
        if self.ran is None:
            return None
        timed, span = self.ran
        return {"outputs_per_hour": len(timed) / span * 3600, "seconds": span,
                "seconds_per_batch_run": sum(r["seconds"] for r in timed) / len(timed),
                "devices": sorted({r["device"] for r in timed})}

    def as_dict(self) -> dict[str, Any]:
        """What the tables show, as numbers (null where a table says none; running: null where
        this machine cannot tell)."""
        state, found = self.state, self.found
        return {"manifest": str(self.info.manifest),
                "running": self.running is not None if self.known else None,
                "process": None if self.running is None else dataclasses.asdict(self.running),
                "eta_seconds": None if self.eta is None else self.eta[0],
                "jobs": self.info.total, "done": state.done,
                "failed": len(state.failed), "pending": len(state.pending),
                "resume_from_checkpoint": len(found.iterations) if found else None,
                "videos_with_frames_done": len(found.frames) if found else None,
                "resume_command": self.resume,
                "throughput": self.throughput(), "report": self.report,
                "failures": [{"row": row, "error": error} for row, error in state.failed]}


def run_status(out: str) -> RunStatus:
    """The run folder `out` (a path, or a URL in object storage) now. A damaged run.json is
    said in a warning, and the ledger alone counted."""
    folder = run_folder(out)
    try:
        info, damaged = read_run_info(folder), False
    except InputError as e:
        if not (folder / RUN_INFO).is_file():
            raise
        log.warning("%s; counting the ledger alone", e)
        info, damaged = ledger_only_info(folder), True
    state = run_state(folder, info)
    try:
        running, known = holder(out if is_url(out) else folder), True
    except OSError:  # this machine cannot tell (locks.holder)
        running, known = None, False
    checking = running is not None and _checking(running, info.started_by)
    resume = None  # none without the manifest's name
    if state.pending and known and running is None and not damaged:
        resume = info.again.command(["pipeline", "run", shown(info.manifest, home=False),
                                     "--out", out], set_items(info.overrides))
    return RunStatus(info, state, resumable(folder, state.pending),
                     ledger.throughput(state.records), stored_at(folder / REPORT), running,
                     known, checking,
                     _eta(state, info.started_at) if running is not None and not checking
                     else None, resume)


def _checking(running: Holder, started_by: Holder | None) -> bool:
    """Whether the run holding the folder is still checking its manifest: its run.json,
    written once it has, is not there yet (the one there names another process on its host).
    run.json naming another host than the lock's: a run seen from another container on the
    same kernel, whose process numbers differ from this one's; taken as written."""
    return started_by is None or (started_by != running and started_by.host == running.host)


def _eta(state: RunState, started_at: float) -> tuple[float, Rows] | None:
    """(seconds left, the jobs done so far by the run that is going on) at that run's pace,
    from its start; None until it has done one."""
    here = [r for r in state.records if r["seconds"] and r["finished_at"] >= started_at]
    if not here or not state.pending:
        return None
    return len(state.pending) * (time.time() - started_at) / len(here), here
