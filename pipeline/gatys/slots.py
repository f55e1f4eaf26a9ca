"""Continuous batching: a batch is a set of slots, and a job that ends hands its slot to the
next job, which starts there at its own iteration 0.

Why: with early stopping a job ends when its loss flattens, at its own iteration; in a fixed
batch it would only be held, its slot idle until the slowest job of the batch ended. Here the
slot is refilled at once, so the device always runs full rows until the jobs run out.

A job's result does not depend on which jobs share its batch or when it entered (tested in
fp64): every per-job quantity is a row of its own (the image, its targets, its L-BFGS pairs and
step count, early stopping's ring, its trace points), a job entering a row starts all of them
over or loads its saved ones (`SlotState`, what a job's checkpoint holds), and an empty or held
row takes no step. The batch keeps its shapes while rows change hands, so a CUDA graph of the
iteration is captured once; when the jobs have run out and at most half the rows are busy, the
busy ones move into a batch of their size, so the last jobs do not pay for empty rows.

One stage run whole, with L-BFGS: coarse-to-fine changes every row's size at once, a stage
too large to run whole has no rows to hand over, and Adam's step count is the batch's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .convergence import EarlyStop
from .engine import (
    FINITE_EVERY,
    Interrupted,
    NonFinite,
    Numerics,
    Run,
    Stage,
    as_written,
    stage_terms,
)
from .loss_trace import LossTrace
from .losses import Targets
from .params import StyleParams
from .trace import TERMS, with_final
from .vgg import VGG19Trunk


@dataclass
class SlotState:
    """Where a job is: its iteration, its image [3, H, W] and its rows of the loop's state
    (optimizer, early stopping, the trace points so far). What its checkpoint holds."""

    iteration: int
    image: Tensor
    state: dict[str, Any]


@dataclass
class Entry:
    """A job for a slot: the caller's `job` index, its start image [3, H, W] and its targets
    (one sample's, on the device); `resume`: where an earlier run left it."""

    job: int
    x0: Tensor
    targets: Targets
    resume: SlotState | None = None


@dataclass
class Finished:
    """A job that left its slot: its image [3, H, W] and final terms (fp32), or the error that
    ended it (its loss became inf/NaN)."""

    job: int
    image: Tensor | None
    terms: dict[str, float]
    iterations: int  # steps it took (fewer than asked when it stopped early)
    trace: list[dict[str, Any]]
    error: str = ""


@dataclass
class SlotHooks:
    """What the loop asks and tells its caller. `take()`: the next job, None when there is
    none; `finish(jobs)`: jobs that ended at this step; `save(job, state)`: every `every`
    iterations of that job where `wants_periodic()` (asked before its state is gathered), and
    for every job when `stop()` turns true (then Interrupted is raised); `progress(steps)`:
    iterations run (a job ending early counts the ones it skips); `snapshot(job, iteration,
    image)`: every params.save_every iterations of a moving job."""

    take: Callable[[], Entry | None]
    finish: Callable[[list[Finished]], None]
    save: Callable[[int, SlotState], None] | None = None
    every: int = 0
    stop: Callable[[], bool] = lambda: False
    progress: Callable[[int], None] | None = None
    snapshot: Callable[[int, int, Tensor], None] | None = None
    wants_periodic: Callable[[], bool] = lambda: True


@dataclass
class _Row:
    entry: Entry
    iteration: int
    since: int  # the first trace point recorded while it held the row
    prior: list[dict[str, Any]] = field(default_factory=list)  # trace points of earlier runs


def run_slots(trunk: VGG19Trunk, size: tuple[int, int], slots: int, params: StyleParams,
              runtime: Numerics, hooks: SlotHooks, *, history: int | None = None,
              trace_every: int = 0) -> None:
    """Optimize every job `hooks.take()` gives, `slots` at a time, at output size (w, h);
    `history`: L-BFGS pairs where memory allows fewer than params asks."""
    carried: list[Entry] = []
    while True:
        first = carried or _take(hooks.take, slots)
        if not first:
            return
        carried = _Batch(trunk, size, first, params, runtime, hooks, history,
                         trace_every).run()


def _take(take: Callable[[], Entry | None], n: int) -> list[Entry]:
    entries: list[Entry] = []
    while len(entries) < n and (entry := take()) is not None:
        entries.append(entry)
    return entries


def stack_targets(targets: Sequence[Targets]) -> Targets:
    """Several samples' targets as one batch's (one group's: all with regions or none)."""
    def cat(part: str) -> dict[str, Tensor]:
        parts = [getattr(t, part) for t in targets]
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}

    return Targets(cat("content"), cat("grams"),
                   guides=None if targets[0].guides is None else cat("guides"))


class _Batch:
    """One run of rows; `run()` returns the jobs to carry into a smaller batch (or none)."""

    def __init__(self, trunk: VGG19Trunk, size: tuple[int, int], entries: list[Entry],
                 params: StyleParams, runtime: Numerics, hooks: SlotHooks,
                 history: int | None, trace_every: int):
        self.trunk, self.params, self.runtime, self.hooks = trunk, params, runtime, hooks
        self.stage = Stage(size, params.iterations, stack_targets([e.targets for e in entries]),
                           history=history)
        self.run_: Run = runtime.start_run(
            trunk, torch.stack([self._pixels(e.resume.image if e.resume else e.x0)
                                for e in entries]),
            self.stage, 0, None, params)
        self.stop = EarlyStop(params.tol, params.tol_window, len(entries), runtime.device)
        self.trace = LossTrace(trace_every)
        self.rows: list[_Row | None] = [None] * len(entries)
        self.exhausted = False
        for i, entry in enumerate(entries):  # with fixed shapes from the first step: a job
            self._enter(i, entry)                # resumed in another batch runs the same ops
        self.run_.hold(self.stop.active)

    def _pixels(self, image: Tensor) -> Tensor:
        return image.to(self.runtime.device, self.runtime.pixel_dtype)

    def _enter(self, i: int, entry: Entry) -> None:
        """Row i becomes `entry`'s."""
        resume = entry.resume
        if resume is not None:
            self.run_.enter(i, self._pixels(resume.image), entry.targets,
                            resume.state["optimizer"])
            self.stop.load_row(i, resume.state["stop"])
        else:
            self.run_.enter(i, self._pixels(entry.x0), entry.targets, None)
            self.stop.reset_row(i)
        self.rows[i] = _Row(entry, resume.iteration if resume else 0, len(self.trace.points),
                            list(resume.state["trace"]) if resume else [])

    def busy(self) -> list[tuple[int, _Row]]:
        return [(i, row) for i, row in enumerate(self.rows) if row is not None]

    def run(self) -> list[Entry]:
        end, every = self.params.iterations, self.hooks.every
        check_every = FINITE_EVERY.get(self.runtime.device.type, 1)
        steps = 0
        while busy := self.busy():
            terms = self.run_.step()
            self.trace.record([row.iteration if row else 0 for row in self.rows], 0, terms,
                              self.stop.active)
            self.stop.update(terms["total"])
            for _, row in busy:
                row.iteration += 1
            steps += 1
            saving = self.hooks.stop()
            due = [i for i, row in busy
                   if every and row.iteration % every == 0 and row.iteration < end]
            if due and not saving and not self.hooks.wants_periodic():
                due = []  # left out by the budget: no host check of the losses for it either
            leaving = self._leaving(busy, terms["total"],
                                    saving or bool(due) or steps % check_every == 0)
            if self.hooks.progress is not None:
                self.hooks.progress(len(busy) + sum(end - row.iteration for i, row in busy
                                                    if i in leaving))
            self._snapshots(busy, leaving)
            if leaving:
                self._finish(leaving)
            if self.hooks.save is not None:
                for i in ([i for i, row in self.busy() if row.iteration] if saving else due):
                    if i not in leaving and (saving or self.hooks.wants_periodic()):
                        self.hooks.save(self.rows[i].entry.job, self.state(i))  # type: ignore[union-attr]
            if saving:
                raise Interrupted(f"stopped after {steps} steps")
            if leaving and self.exhausted and 2 * len(self.busy()) <= len(self.rows):
                return [self._carried(i) for i, _ in self.busy()]
        return []

    def _leaving(self, busy: list[tuple[int, _Row]], total: Tensor, check: bool
                 ) -> dict[int, str]:
        """Rows whose job ends now: its iterations are done, it stopped early, or its loss is
        inf/NaN; row -> error ("" when it ended well). Early stops and inf/NaN are read from
        the device only when `check` (every few steps on a GPU)."""
        leaving = {i: "" for i, row in busy if row.iteration >= self.params.iterations}
        if check:
            bad = (~torch.isfinite(total)).tolist()
            held = (~self.stop.active).tolist()
            for i, row in busy:
                if bad[i]:
                    leaving[i] = str(NonFinite([i], row.iteration - 1))
                elif held[i] and self.stop.enabled:
                    leaving.setdefault(i, "")
        return leaving

    def _snapshots(self, busy: list[tuple[int, _Row]], leaving: dict[int, str]) -> None:
        every = self.params.save_every
        due = [(i, row) for i, row in busy
               if every and row.iteration % every == 0 and i not in leaving]
        if self.hooks.snapshot is None or not due:
            return
        moved = (self.stop.last == self.stop.step).tolist()  # not held at this step
        x = self.run_.x.detach()
        for i, row in due:
            if moved[i]:
                self.hooks.snapshot(row.entry.job, row.iteration, x[i])

    def _finish(self, leaving: dict[int, str]) -> None:
        """The leaving jobs' results (final terms in fp32, one forward for all of them), then
        their rows go to the next jobs."""
        rows = [(i, row) for i, row in self.busy() if i in leaving]
        index = [i for i, _ in rows]
        x = as_written(self.run_.x.detach()[index])
        final = Stage(self.stage.size, self.params.iterations,
                      stack_targets([row.entry.targets for _, row in rows]))
        terms = stage_terms(self.trunk, final, self.params, self.runtime.widened(), x)
        values = torch.stack([terms[k].double() for k in TERMS], 1).cpu().tolist()
        finite = torch.isfinite(x.flatten(1)).all(1).tolist()
        used, last = self.stop.used[index].tolist(), self.stop.last[index].tolist()
        done = []
        for k, (i, row) in enumerate(rows):
            error = leaving[i] or ("" if finite[k] and all(map(_finite, values[k])) else
                                   str(NonFinite([i], row.iteration)))
            trace = row.prior + self.trace.samples([i], row.since)[0]
            done.append(Finished(row.entry.job, None if error else x[k].cpu(),
                                 {} if error else dict(zip(TERMS, values[k], strict=True)),
                                 used[k], [] if error else with_final(trace, last[k], 0,
                                                                      values[k]), error))
            self.rows[i] = None
        self.hooks.finish(done)
        for i in index:
            entry = None if self.exhausted else self.hooks.take()
            if entry is None:
                self.exhausted = True
                self.stop.reset_row(i, active=False)  # empty: held, takes no step
            else:
                self._enter(i, entry)
        self._forget()

    def _forget(self) -> None:
        """Drop the trace points that no job still holding a row needs."""
        first = min((row.since for _, row in self.busy()), default=len(self.trace.points))
        if first:
            del self.trace.points[:first]
            for _, row in self.busy():
                row.since -= first

    def state(self, i: int) -> SlotState:
        """Row i's job as its checkpoint holds it (the image in the run's precision)."""
        row = self.rows[i]
        assert row is not None
        return SlotState(row.iteration, self.run_.x.detach()[i].cpu(),
                         {"optimizer": self.run_.row_state(i), "stop": self.stop.row_state(i),
                          "trace": row.prior + self.trace.samples([i], row.since)[0]})

    def _carried(self, i: int) -> Entry:
        row = self.rows[i]
        assert row is not None
        return Entry(row.entry.job, row.entry.x0, row.entry.targets, self.state(i))


def _finite(value: float) -> bool:
    return value == value and abs(value) != float("inf")
