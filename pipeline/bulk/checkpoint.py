"""Checkpoints: images, optimizer state and iteration, written atomically and checksummed.

Under <out>/.checkpoints/: one file per job that goes through slots (continuous batching),
named by its job key, which it resumes from in whatever batch, worker or node it lands on the
next time; one file per batch for the others (coarse-to-fine, Adam, by blocks: their jobs
step together), named by the batch id (a hash of its job keys), which a rerun forms again as it
was (`batch_checkpoints`, queue.py). A checkpoint whose job keys,
format or checksum do not match, or that fails to load, is ignored and deleted: its jobs then
start over, which is slower but never wrong. One whose jobs are all done is swept at the end
of a run (see `sweep_finished`). Where they are and what each is for: checkpoint_files.py.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import torch
from torch import Tensor

from ..gatys.engine import tree_to
from ..io.files import atomic_path, describe_os_error
from ..io.mirror import fetch_missing
from ..io.tensor_tree import tree_digest
from .checkpoint_files import FORMAT, discard

log = logging.getLogger("pipeline.run")


class _KeepWriteError:
    """A file torch.save writes through, keeping the OSError of a failed write: torch turns
    it into a RuntimeError ("unexpected pos ...") that no longer says the disk is full."""

    def __init__(self, f: BinaryIO):
        self.f, self.error = f, None

    def write(self, data: bytes) -> int:
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        self.f.flush()


def _content(state: dict[str, Any]) -> dict[str, Any]:
    return {k: state[k] for k in ("keys", "iteration", "images", "optimizer")}


def save_checkpoint(path: Path, keys: list[str], iteration: int, images: Tensor,
                    optimizer_state: dict[str, Any]) -> None:
    """Raises OSError when the file cannot be written (disk full), and leaves no part of it."""
    state = {"format": FORMAT, "keys": keys, "iteration": iteration,
             "images": images.detach().cpu(), "optimizer": tree_to(optimizer_state, "cpu")}
    state["checksum"] = tree_digest(_content(state))
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        writer = _KeepWriteError(f)
        try:
            torch.save(state, writer)
        except RuntimeError:
            if writer.error is not None:
                raise writer.error from None
            raise


class CheckpointSaver:
    """Writes one batch's checkpoints (its own, or each of its jobs'), and keeps the periodic
    ones within `budget` of the batch's time: `wants_periodic()` says whether one that falls
    due now may be written, false while the writes so far (and the next, counted at the last
    one's time) exceed that share of the time since the saver was made. A job's checkpoint
    holds its whole L-BFGS history, hundreds of MB at 512 px, and a GPU optimizes 50
    iterations of a batch in less time than it takes to write them. A write that fails (disk
    full) is said once and let go: the batch goes on, only its resumability is lost."""

    def __init__(self, budget: float = 1.0, clock: Callable[[], float] = time.monotonic):
        self.budget, self.clock = budget, clock
        self.born, self.spent, self.last = clock(), 0.0, 0.0
        self.warned = False

    def wants_periodic(self) -> bool:
        return self.budget >= 1 or (self.budget > 0 and self.spent + self.last
                                    <= self.budget * (self.clock() - self.born))

    def save(self, path: Path, keys: list[str], iteration: int, images: Tensor,
             state: dict[str, Any]) -> None:
        start = self.clock()
        try:
            save_checkpoint(path, keys, iteration, images, state)
        except OSError as e:
            if not self.warned:
                self.warned = True
                log.warning("cannot write a checkpoint (%s); going on without one",
                            describe_os_error(e, path.parent))
        self.last = self.clock() - start
        self.spent += self.last

    def saving(self, path: Path, keys: list[str]
               ) -> Callable[[int, Tensor, dict[str, Any]], None]:
        """Checkpointing's `save` for the batch of these job keys."""
        return functools.partial(self.save, path, keys)


def load_checkpoint(path: Path, keys: list[str]) -> tuple[int, Tensor, dict[str, Any]] | None:
    """The saved (iteration, images, optimizer state) of the batch with these job keys; None
    (and the file deleted) when there is none, or it is torn, foreign or fails its checksum."""
    fetch_missing(path)  # a worker on another machine may have left it in the bucket
    if not path.is_file():
        return None
    reason = "of another format or batch"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if state.get("format") == FORMAT and state["keys"] == keys:
            if state["checksum"] == tree_digest(_content(state)):
                return state["iteration"], state["images"], state["optimizer"]
            reason = "its checksum does not match: the file was damaged"
    except Exception as e:  # a torn or foreign file: start the batch over
        reason = f"unreadable: {type(e).__name__}: {e}".splitlines()[0]
    log.warning("checkpoint %s %s; starting its jobs over", path.name, reason)
    discard(path)
    return None


