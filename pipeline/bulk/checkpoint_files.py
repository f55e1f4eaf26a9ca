"""Which checkpoints a run folder holds, and which jobs and iteration each one is for, read
without torch: `pipeline status` counts what a rerun resumes, the queue forms checkpointed
fixed batches again, and a finished run sweeps its jobs' checkpoints. Writing and loading
them is checkpoint.py's."""

from __future__ import annotations

import collections
import pickle
import zipfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from ..io.mirror import removed

# Bumped when the layout changes (2: the compact L-BFGS history; 3: a checksum; 4: the loop's
# state: optimizer, early stopping, loss trace; 5: per-sample steps and early-stopping rings);
# another format is ignored like a foreign one.
FORMAT = 5


def checkpoint_dir(out_dir: Path) -> Path:
    return out_dir / ".checkpoints"


def checkpoint_path(out_dir: Path, batch_id: str) -> Path:
    return checkpoint_dir(out_dir) / f"{batch_id}.pt"


def job_checkpoint_path(out_dir: Path, key: str) -> Path:
    return checkpoint_dir(out_dir) / f"job-{key}.pt"


def saved_checkpoints(out_dir: Path) -> list[Path]:
    """The checkpoint files, not the hidden temp file of one being written (which `*.pt` also
    matches: files.atomic_path names it `.<name>.<random>.tmp.pt`)."""
    return [p for p in checkpoint_dir(out_dir).glob("*.pt") if not p.name.startswith(".")]


def discard(path: Path) -> None:
    """Delete a checkpoint (or another file of the run's own), and its copy in object storage
    (io/mirror.py)."""
    path.unlink(missing_ok=True)
    removed(path)


def sweep_finished(out_dir: Path, done_keys: Callable[[], set[str]]) -> tuple[int, int]:
    """Delete the checkpoints whose jobs are all done; returns (files, bytes) removed.

    A worker deletes its batch's checkpoint after writing the ledger, but a kill between the two,
    or a rerun with other batching (another --batch-size, a batch halved after an out-of-memory
    error) leaves files of ~100 MB per image that no batch id will ever match again. A checkpoint
    with any job not done is kept: a later run may resume it. `done_keys` is only called when
    there is something to check, so a clean folder costs no ledger read.
    """
    files = saved_checkpoints(out_dir)
    if not files:
        return 0, 0
    done, removed, freed = done_keys(), 0, 0
    for path in files:
        if (peeked := _peek(path)) is not None and set(peeked[0]) <= done:
            freed += path.stat().st_size
            discard(path)
            removed += 1
    return removed, freed


def batch_checkpoints(out_dir: Path) -> list[tuple[tuple[str, ...], int]]:
    """The job keys and iteration of each fixed batch's checkpoint (not the jobs' own) of this
    format, so a rerun can form those batches again at another batch size, and resume them."""
    batches = [p for p in saved_checkpoints(out_dir) if not p.name.startswith("job-")]
    return list(_current(batches))


def job_checkpoints(out_dir: Path) -> dict[str, int]:
    """The iteration of each job's own checkpoint (continuous batching), by its key."""
    own = [p for p in saved_checkpoints(out_dir) if p.name.startswith("job-")]
    return {keys[0]: iteration for keys, iteration in _current(own) if len(keys) == 1}


def checkpointed(out_dir: Path) -> dict[str, int]:
    """Each job key a checkpoint of this format holds (its own or its batch's), and the
    furthest iteration it holds it at: what a rerun can resume."""
    found: dict[str, int] = {}
    for keys, iteration in _current(saved_checkpoints(out_dir)):
        for key in keys:
            found[key] = max(found.get(key, 0), iteration)
    return found


def _current(paths: Iterable[Path]) -> Iterator[tuple[tuple[str, ...], int]]:
    """The job keys and iteration of each of these checkpoints that is of this format."""
    for path in paths:
        if (peeked := _peek(path)) is not None and peeked[2] == FORMAT:
            yield peeked[0], peeked[1]


def _peek(path: Path) -> tuple[tuple[str, ...], int, Any] | None:
    """A checkpoint's job keys, iteration and format; None for a torn or foreign one
    (load_checkpoint deals with it if its batch comes). Read without torch: torch.save writes
    a zip archive whose `data.pkl` holds the state's structure, its tensors referring to the
    archive's other records; unpickled with every torch object stubbed out, only that small
    record is read, not the images or the L-BFGS history."""
    try:
        with zipfile.ZipFile(path) as archive:
            name = next(n for n in archive.namelist() if n.endswith("/data.pkl"))
            with archive.open(name) as f:
                state = _Structure(f).load()
        return tuple(state["keys"]), int(state["iteration"]), state.get("format")
    except Exception:
        return None


class _Stub:
    """What a tensor, a storage or any other torch object of a checkpoint unpickles to here."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass


class _Structure(pickle.Unpickler):
    """Unpickles a checkpoint's state with its torch objects stubbed out; no other class is
    looked up, so only plain data is built."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):  # a tensor's hooks
            return collections.OrderedDict
        if module.split(".")[0] == "torch":
            return _Stub
        raise pickle.UnpicklingError(f"{module}.{name} in a checkpoint")

    def persistent_load(self, pid: Any) -> Any:  # a tensor's storage: another record
        return None
