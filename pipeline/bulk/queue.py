"""The run's batches, cut when a worker asks for one, at that worker's batch size (a GPU and a
CPU worker each get what suits them). Groups are cut in manifest order, so workers with equal
batch sizes always form the same batches from the same unfinished jobs. A fixed batch handed
back (its worker died) goes out first and whole, to a worker whose batch size holds it (to any
once nothing else is left: a GPU's batch waits for a GPU while a CPU has other work): it
resumes from its checkpoint. So does a fixed batch that an earlier run checkpointed
(coarse-to-fine, Adam, by blocks, or any batch of a --no-continuous run: its jobs step
together, so they resume together), formed again as it was where a worker's batch size holds
it: a job of it written before the run ended runs again with it, its output kept, where that
costs less than starting the others over. A --no-continuous run still sends the jobs that a
run in slots checkpointed through slots, each from its own checkpoint. On several workers
a multi-pass video goes out as the pieces of its passes (pass_plan.py), before the groups:
a pass waiting for its last piece leaves the other workers to the rest.

Jobs that go through slots (continuous batching, gatys/slots.py) go out in runs longer than
the batch size, so a row freed mid-run is refilled: each worker's part of the group (in
proportion to its batch size among the workers'), at most RUN_SLOTS times its batch size, at
least one batch. At the run's end, with fewer jobs left than fill every worker's batch, each
worker that asks takes its part of them, slots or not: none idles while another runs a whole
batch of the last ones. A dead worker's run goes back and out
first to whichever worker asks next, cut to that worker's batch size and run length: its
jobs resume from their own checkpoints in any rows, so it never waits for a worker like the
one that died."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace

from .jobs import Batch, Job, slotted
from .pass_plan import PassPlan, splits

RUN_SLOTS = 8


class BatchQueue:
    def __init__(self, jobs: Iterable[Job], workers: int = 1, continuous: bool = True,
                 checkpointed: Iterable[tuple[Sequence[str], int]] = (),
                 written: Iterable[Job] = (), largest: Callable[[Job], int] | None = None,
                 own: dict[str, int] | None = None):
        """`checkpointed`: the job keys and iteration of each fixed batch's checkpoint
        (checkpoint_files.batch_checkpoints); `written`: the jobs done before, which they may hold;
        `largest(job)`: the largest batch size of any worker for that job (None: any); `own`:
        the iteration of each job's own checkpoint, by key (checkpoint_files.job_checkpoints)."""
        groups: dict[str, deque[Job]] = {}
        own = own or {}
        self._plans: list[PassPlan] = []
        for job in jobs:
            if splits(job, workers):
                self._plans.append(PassPlan(job, workers))
            else:
                groups.setdefault(job.group, deque()).append(job)
        self._returned = deque(_resumed(groups, checkpointed, written, continuous, largest,
                                        own))
        if not continuous:
            self._returned.extend(_own_checkpoints(groups, own))
        self._groups = deque(group for group in groups.values() if group)
        self._workers, self._continuous = workers, continuous

    def take(self, batch_size: Callable[[Job], int],
             capacity: Callable[[Job], int] | None = None, running: int = 0) -> Batch | None:
        """The next batch, of at most `batch_size(job)` jobs of one group (or frames of a
        piece); None when none can go out now. `capacity(job)`: the batch sizes of the run's
        workers added up (None: this one's times the workers): a worker's part of the jobs
        is in proportion to its batch size; `running`: the jobs the other workers have not
        ended yet, which the run's end shares out with those left here."""
        if (batch := self._returned_fitting(batch_size)) is not None:
            return batch
        for plan in self._plans:
            if (batch := plan.take(batch_size(plan.job))) is not None:
                if plan.released:
                    self._plans.remove(plan)
                return batch
        if not self._groups:
            return self._returned.popleft() if self._returned else None
        group = self._groups[0]
        size = batch_size(group[0])
        whole = capacity(group[0]) if capacity else size * self._workers

        def part(jobs: int) -> int:  # this worker's part of `jobs`, rounded up
            return -(-jobs * size // max(whole, size))

        # Fewer jobs left than fill every worker's batch (the run's end): each takes its part,
        # so none idles while another runs a whole batch of the last ones.
        least = min(size, part(running + sum(len(g) for g in self._groups)))
        if self._continuous and slotted(group[0]):
            n = min(len(group), max(least, min(part(len(group)), size * RUN_SLOTS)))
            batch = Batch(tuple(group.popleft() for _ in range(n)), slots=min(size, n))
        else:
            batch = Batch(tuple(group.popleft() for _ in range(min(least, len(group)))))
        if not group:
            self._groups.popleft()
        return batch

    def _returned_fitting(self, batch_size: Callable[[Job], int]) -> Batch | None:
        for at, batch in enumerate(self._returned):
            size = batch_size(batch.jobs[0])
            if batch.slots:  # its jobs resume from their own checkpoints in any rows
                del self._returned[at]
                n = min(len(batch.jobs), size * RUN_SLOTS)
                if n < len(batch.jobs):  # the rest for the next worker that asks
                    self._returned.insert(at, replace(batch, jobs=batch.jobs[n:]))
                return replace(batch, jobs=batch.jobs[:n], slots=min(size, n))
            if len(batch.jobs) <= size:
                del self._returned[at]
                return batch
        return None

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
        with `batch_size`: jobs in slots count as batches of their size too."""
        return (sum(-(-len(b.jobs) // batch_size(b.jobs[0])) if b.slots else 1
                    for b in self._returned)
                + sum(-(-len(g) // batch_size(g[0])) for g in self._groups)
                + sum(p.pieces(batch_size(p.job)) for p in self._plans))

    def __bool__(self) -> bool:
        return bool(self._returned or self._groups or self._plans)


def _resumed(groups: dict[str, deque[Job]], checkpointed: Iterable[tuple[Sequence[str], int]],
             written: Iterable[Job], continuous: bool, largest: Callable[[Job], int] | None,
             own: dict[str, int]) -> list[Batch]:
    """The checkpointed fixed batches that are worth forming again, their pending jobs taken
    out of `groups`. Resuming runs every job of the batch for the iterations left; starting
    over runs only the pending ones, for all of them. A batch larger than any worker's batch
    size now is not formed: a smaller --batch-size is often asked for memory. Jobs that would
    go through slots (a run stopped with --no-continuous, resumed without it) resume as the
    fixed batch unless one of them has a checkpoint of its own as far (a later run in slots
    took it further)."""
    pending = _by_key(job for group in groups.values() for job in group)
    done = _by_key(written)
    batches = []
    # The furthest first: a job in two checkpoints (a run killed twice at other batch sizes)
    # resumes from the later one; and every run forms the same batches.
    for keys, iteration in sorted(checkpointed, key=lambda c: (-c[1], tuple(c[0]))):
        jobs = _formed(keys, pending, done)
        if jobs is None or len({job.group for job in jobs}) > 1:
            continue  # a job is gone (its row, or failed since), or the manifest changed
        first = jobs[0]
        left = [job for job in jobs if job in pending.get(job.key, ())]
        ahead = all(own.get(job.key, -1) < iteration for job in left)
        fixed = first.spec.video is None and (ahead or not (continuous and slotted(first)))
        fits = largest is None or len(jobs) <= largest(first)
        total = first.spec.params.iterations
        if fixed and fits and left and len(jobs) * (total - iteration) <= len(left) * total:
            for job in left:
                groups[first.group].remove(job)
                pending[job.key].remove(job)
            kept = frozenset(job.id for job in jobs if job not in left)
            batches.append(Batch(tuple(jobs), kept=kept))
    return batches


def _own_checkpoints(groups: dict[str, deque[Job]], own: dict[str, int]) -> list[Batch]:
    """In a --no-continuous run, the jobs that a run in slots checkpointed, taken out of
    `groups`: a fixed batch steps its jobs together from one iteration, so they go through
    slots still, each resuming from its own checkpoint, not from iteration 0."""
    batches = []
    for group in groups.values():
        jobs = tuple(job for job in group if job.key in own and slotted(job))
        for job in jobs:
            group.remove(job)
        if jobs:
            batches.append(Batch(jobs, slots=1))  # cut to a worker's batch size when taken
    return batches


def _by_key(jobs: Iterable[Job]) -> dict[str, list[Job]]:
    found: dict[str, list[Job]] = {}
    for job in jobs:
        found.setdefault(job.key, []).append(job)
    return found


def _formed(keys: Sequence[str], pending: dict[str, list[Job]], done: dict[str, list[Job]]
            ) -> list[Job] | None:
    """A job for each key, in order, each once (rows with the same inputs and parameters share
    a key): a pending one where there is one, else a written one; None if one is missing."""
    jobs: list[Job] = []
    for key in keys:
        job = next((j for j in (*pending.get(key, ()), *done.get(key, ())) if j not in jobs),
                   None)
        if job is None:
            return None
        jobs.append(job)
    return jobs
