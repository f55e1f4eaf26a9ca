"""What workers tell the run: one small frozen dataclass per kind of event, sent through a
distributor (so picklable) and read by the run's loop (distribute.py) and the progress
display. `Lost` is the one a distributor says for a worker that could not: it died."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Ready:
    """The worker has its runtime and waits for a batch."""

    worker: int
    device: str
    precision: str
    reason: str  # why that precision, and the convs' algorithm (Runtime.numerics)


@dataclass(frozen=True)
class BatchStarted:
    worker: int
    jobs: int
    iterations: int  # of the batch; frames of its longest clip for a batch of videos
    resumed_at: int  # the checkpoint's iteration, 0 for a fresh start
    unit: str = "iterations"  # what `iterations` and Iteration events count
    label: str = ""  # what the batch is, when not "batch of N" (a piece of a video's passes)


@dataclass(frozen=True)
class Iteration:
    worker: int
    iteration: int


@dataclass(frozen=True)
class BatchDone:
    """The batch's outputs and ledger rows are written (a piece: its frames are kept)."""

    worker: int
    done: int
    failures: list[tuple[int, str]]  # (manifest row, one-line error)
    piece_failed: bool = False  # a piece of a video's passes failed: the job goes out whole


@dataclass(frozen=True)
class JobsDone:
    """Jobs of a batch in slots ended: their outputs and ledger rows are written (the batch's
    BatchDone then counts none)."""

    worker: int
    done: int
    failures: list[tuple[int, str]]


@dataclass(frozen=True)
class Log:
    worker: int
    message: str
    warning: bool = False  # shown also where the run is quiet (run --quiet)


@dataclass(frozen=True)
class CouldNotStart:
    worker: int
    message: str


@dataclass(frozen=True)
class CannotWrite:
    """An output or ledger write failed (disk full): the run must stop."""

    worker: int
    message: str


@dataclass(frozen=True)
class Exited:
    worker: int


@dataclass(frozen=True)
class Lost:
    """The worker died without a word (killed, crashed, its node lost)."""

    worker: int
    how: str  # "signal 9", "exit code 1", "node ... is dead"


Event = (Ready | BatchStarted | Iteration | BatchDone | JobsDone | Log | CouldNotStart
         | CannotWrite | Exited | Lost)
