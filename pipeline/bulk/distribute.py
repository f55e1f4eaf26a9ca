"""The run's loop over any distributor: hands batches to workers as they ask, reads their
events, puts a dead worker's batch back, and turns Ctrl-C into a checkpointed stop.

A distributor (distributors/) only knows how to start a worker, send it a batch, stop or kill
its workers and report their events, Lost ones included; everything a run decides lives
here, so a local run and a Ray run schedule, recover and stop alike.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from .events import (
    BatchDone,
    CannotWrite,
    CouldNotStart,
    Event,
    Exited,
    JobsDone,
    Lost,
    Ready,
)
from .interrupts import stop_signals
from .jobs import Batch, Job, default_batch_size
from .queue import BatchQueue

# A batch whose worker died this many times is left pending (the run then exits non-zero):
# a batch that kills its worker every time (the kernel's OOM killer) must not loop forever.
MAX_WORKER_DEATHS = 2
POLL_SECONDS = 0.25


@dataclass(frozen=True)
class Slot:
    """One worker a distributor runs. `cpu_workers`: CPU workers sharing its machine (the
    default CPU batch size is a share of one machine's pixel budget)."""

    device: str          # "cpu" or "cuda:N", as the worker's machine names it
    label: str           # for the display: "cpu", "cuda:1", "node 3f2a9c cuda:0"
    threads: int         # intra-op threads of a CPU worker
    cpu_workers: int = 1

    def batch_size(self, fixed: int) -> Callable[[Job], int]:
        """`fixed` (--batch-size), or 0: the measured default for this device and job size."""
        return lambda job: fixed or default_batch_size(self.device, job.size, self.cpu_workers)


class Distributor(Protocol):
    """Runs workers somewhere; `slots[wid]` says what worker wid is."""

    slots: list[Slot]

    def start(self, wid: int) -> None:
        """Start worker wid (again, after it was Lost); it says Ready or CouldNotStart."""

    def send(self, wid: int, batch: Batch | None) -> None:
        """Hand worker wid its next batch; None: no more, it says Exited."""

    def events(self, timeout: float) -> list[Event]:
        """What the workers said since the last call (waiting up to `timeout` for something),
        and Lost for each worker found dead."""

    def restartable(self, wid: int) -> bool:
        """Whether a fresh worker can take wid's place (not when its machine is gone)."""

    def stop(self) -> None:
        """Ask every worker to checkpoint its batch and leave."""

    def kill(self) -> None:
        """End every worker now."""

    def close(self) -> None:
        """End what is left (workers, connections) once the run is over."""


class Display(Protocol):
    def handle(self, event: Event) -> None: ...
    def worker_restarted(self, wid: int) -> None: ...
    def interrupted(self) -> None: ...
    def aborted(self) -> None: ...


class QuietDisplay:
    """A run's display that shows nothing: the Python API's default."""

    def __init__(self, total: int = 0, devices: list[str] | None = None) -> None:
        pass

    def __enter__(self) -> QuietDisplay:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def handle(self, event: Event) -> None:
        pass

    def worker_restarted(self, wid: int) -> None:
        pass

    def interrupted(self) -> None:
        pass

    def aborted(self) -> None:
        pass


@dataclass
class Outcome:
    """What the loop adds to a run's result."""

    done: int = 0
    failed: list[tuple[int, str]] = field(default_factory=list)
    interrupted: int = 0   # the signal that stopped the run, 0 if none
    errors: list[str] = field(default_factory=list)
    precision: dict[str, str] = field(default_factory=dict)  # device -> "bf16 (why)"
    pieces: dict[int, int] = field(default_factory=dict)  # worker -> multi-pass pieces run


@dataclass
class _State:
    queue: BatchQueue
    batch_size: int
    finished: Callable[[Batch], bool]
    outcome: Outcome
    running: dict[int, Batch] = field(default_factory=dict)
    idle: list[int] = field(default_factory=list)
    gone: set[int] = field(default_factory=set)
    deaths: dict[str, int] = field(default_factory=dict)
    stopping: bool = False
    refused: list[str] = field(default_factory=list)  # why workers could not start
    ready: set[int] = field(default_factory=set)  # said Ready since they were (re)started
    reported: dict[int, int] = field(default_factory=dict)  # jobs its batch said ended (slots)


def distribute(workers: Distributor, queue: BatchQueue, batch_size: int, display: Display,
               finished: Callable[[Batch], bool], into: Outcome | None = None) -> Outcome:
    """Run the queue's batches on `workers`, adding what happens to `into` (a new Outcome if
    None); `finished(batch)`: its outputs are all written (a batch whose worker died after
    writing them is not run again). The first Ctrl-C or
    SIGTERM asks every worker to checkpoint and leave; a second one kills them (their batches
    resume from the last periodic checkpoint). A failed write (disk full) stops the run the
    same way as a first Ctrl-C."""
    state = _State(queue, batch_size, finished, into if into is not None else Outcome())
    for wid in range(len(workers.slots)):
        workers.start(wid)
    with stop_signals() as signals:
        while len(state.gone) < len(workers.slots):
            received = signals()
            if received and not state.stopping:
                _halt(workers, state, display, received.pop(0))
            if received:
                workers.kill()
                display.aborted()
                break
            for event in workers.events(POLL_SECONDS):
                if event.worker not in state.gone:
                    _handle(event, workers, state, display)
            if state.stopping or not (state.queue or state.running):
                while state.idle:  # nothing left for them
                    workers.send(state.idle.pop(), None)
    if state.queue or state.running:  # work left: say why no worker took it
        state.outcome.errors += list(dict.fromkeys(state.refused))
    return state.outcome


def _handle(event: Event, workers: Distributor, state: _State, display: Display) -> None:
    wid, outcome = event.worker, state.outcome
    if isinstance(event, Lost):
        display.handle(event)
        _bury(wid, event.how, workers, state, display)
        return
    if isinstance(event, Ready):
        state.ready.add(wid)
        outcome.precision[event.device] = f"{event.precision} ({event.reason})"
    elif isinstance(event, JobsDone):
        outcome.done += event.done
        outcome.failed += event.failures
        state.reported[wid] = state.reported.get(wid, 0) + event.done + len(event.failures)
    elif isinstance(event, BatchDone):
        outcome.done += event.done
        outcome.failed += event.failures
        state.reported.pop(wid, None)
        batch = state.running.pop(wid, None)
        if batch is not None and batch.piece is not None:
            outcome.pieces[wid] = outcome.pieces.get(wid, 0) + 1
            state.queue.piece_done(batch, ok=not event.piece_failed)
    elif isinstance(event, CouldNotStart):
        state.refused.append(f"a worker could not start: {event.message}")
    elif isinstance(event, CannotWrite):
        outcome.errors.append(event.message)
        _halt(workers, state, display)
    if isinstance(event, Ready | BatchDone):
        _feed(wid, workers, state)
        for waiting in list(state.idle):  # a pass whole: its next pass's pieces for all
            state.idle.remove(waiting)
            _feed(waiting, workers, state)
    elif isinstance(event, Exited | CouldNotStart | CannotWrite):
        state.gone.add(wid)  # stopped: its batch is checkpointed, and pending
        state.running.pop(wid, None)
    display.handle(event)


def _feed(wid: int, workers: Distributor, state: _State) -> None:
    """Worker wid's next batch. With none left while others still run, it waits: a batch
    whose worker dies comes back, and it may take it."""
    live = [slot.batch_size(state.batch_size)
            for i, slot in enumerate(workers.slots) if i not in state.gone]
    running = sum(len(b.jobs) - state.reported.get(w, 0) for w, b in state.running.items()
                  if w != wid)
    batch = None if state.stopping else state.queue.take(
        workers.slots[wid].batch_size(state.batch_size),
        lambda job: sum(size(job) for size in live), running)
    if batch is None and state.running and not state.stopping:
        state.idle.append(wid)
        return
    if batch is not None:
        state.running[wid] = batch
    workers.send(wid, batch)


def _halt(workers: Distributor, state: _State, display: Display, signum: int = 0) -> None:
    if not state.stopping:
        state.stopping = True
        workers.stop()
        display.interrupted()
    state.outcome.interrupted = state.outcome.interrupted or signum


def _bury(wid: int, how: str, workers: Distributor, state: _State, display: Display
          ) -> None:
    """A worker died without saying so (killed, crashed, its node lost): its batch goes back
    to the front of the queue, for a fresh worker in its place or any other, unless it has now
    ended MAX_WORKER_DEATHS workers."""
    state.gone.add(wid)
    if wid in state.idle:
        state.idle.remove(wid)
    batch = state.running.pop(wid, None)
    reported = state.reported.pop(wid, 0)  # its jobs that ended before it died
    # One that never got as far as Ready (it cannot import, its machine cannot start it)
    # would only die again.
    restart = not state.stopping and wid in state.ready and workers.restartable(wid)
    if wid not in state.ready:
        state.refused.append(f"a worker died before it was ready ({how})")
    state.ready.discard(wid)
    if batch is not None:
        if state.finished(batch):  # done; only its report was lost
            state.outcome.done += len(batch.pending) - reported
        else:
            state.deaths[batch.id] = state.deaths.get(batch.id, 0) + 1
            if state.deaths[batch.id] >= MAX_WORKER_DEATHS:
                rows = ", ".join(str(j.spec.row) for j in batch.pending)
                state.outcome.errors.append(
                    f"a batch of {len(batch.pending)} (rows {rows}) ended "
                    f"{state.deaths[batch.id]} workers ({how}; out of memory?); left pending")
                state.queue.abandon(batch)
            elif not state.stopping:
                state.queue.put_back(batch)
                if not restart and state.idle:
                    _feed(state.idle.pop(0), workers, state)
    if restart and (state.queue or state.running):
        state.gone.discard(wid)
        workers.start(wid)
        display.worker_restarted(wid)


__all__ = ["MAX_WORKER_DEATHS", "Distributor", "Outcome", "Slot", "distribute"]
