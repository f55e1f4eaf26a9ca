"""The run's batches, cut when a worker asks for one, at that worker's batch size (a GPU and a
CPU worker each get what suits them). Groups are cut in manifest order, so workers with equal
batch sizes always form the same batches from the same unfinished jobs. A batch handed back
(its worker died) goes out first and whole: it resumes from its checkpoint. On several workers
a multi-pass video goes out as the pieces of its passes (pass_plan.py), before the groups:
a pass waiting for its last piece leaves the other workers to the rest.

Jobs that go through slots (continuous batching, gatys/slots.py) go out in runs longer than
the batch size, so a row freed mid-run is refilled: each worker's share of the group, at most
RUN_SLOTS times its batch size (a dead worker's run goes back whole; its jobs resume from
their own checkpoints), at least one batch."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable

from .jobs import Batch, Job, slotted
from .pass_plan import PassPlan, splits

RUN_SLOTS = 8


class BatchQueue:
    def __init__(self, jobs: Iterable[Job], workers: int = 1, continuous: bool = True):
        groups: dict[str, deque[Job]] = {}
        self._plans: list[PassPlan] = []
        for job in jobs:
            if splits(job, workers):
                self._plans.append(PassPlan(job, workers))
            else:
                groups.setdefault(job.group, deque()).append(job)
        self._groups = deque(groups.values())
        self._returned: deque[Batch] = deque()
        self._workers, self._continuous = workers, continuous

    def take(self, batch_size: Callable[[Job], int]) -> Batch | None:
        """The next batch, of at most `batch_size(job)` jobs of one group (or frames of a
        piece); None when none can go out now."""
        if self._returned:
            return self._returned.popleft()
        for plan in self._plans:
            if (batch := plan.take(batch_size(plan.job))) is not None:
                if plan.released:
                    self._plans.remove(plan)
                return batch
        if not self._groups:
            return None
        group = self._groups[0]
        size = batch_size(group[0])
        if self._continuous and slotted(group[0]):
            share = -(-len(group) // self._workers)
            n = min(len(group), max(size, min(share, size * RUN_SLOTS)))
            batch = Batch(tuple(group.popleft() for _ in range(n)), slots=min(size, n))
        else:
            batch = Batch(tuple(group.popleft() for _ in range(min(size, len(group)))))
        if not group:
            self._groups.popleft()
        return batch

    def put_back(self, batch: Batch) -> None:
        self._returned.appendleft(batch)

    def piece_done(self, batch: Batch, ok: bool) -> None:
        """A piece of a plan finished (or failed: its job then goes out whole)."""
        if (plan := self._plan(batch)) is not None:
            plan.done(ok)

    def abandon(self, batch: Batch) -> None:
        """A piece is left pending (it killed its workers): so is its job."""
        if (plan := self._plan(batch)) is not None:
            self._plans.remove(plan)

    def _plan(self, batch: Batch) -> PassPlan | None:
        if batch.piece is None:
            return None
        return next((p for p in self._plans if p.job == batch.jobs[0]), None)

    def count(self, batch_size: Callable[[Job], int]) -> int:
        """How many batches remain (at most, for a plan: a pass's pieces) if every one is cut
        with `batch_size`."""
        return (len(self._returned) + sum(-(-len(g) // batch_size(g[0])) for g in self._groups)
                + sum(p.pieces(batch_size(p.job)) for p in self._plans))

    def __bool__(self) -> bool:
        return bool(self._returned or self._groups or self._plans)
