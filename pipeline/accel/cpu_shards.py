"""A CPU batch split across the cores: its shards step side by side, one thread each.

Why: on the CPU, a batch's GEMMs are already large at 256 px, so a bigger batch gains little
from them, while splitting every op over the cores costs a hand-off per op and leaves the
memory-bound work (ReLU, casts, the L-BFGS history) to run at one thread's pace between the
GEMMs. The jobs of a batch are independent, so each core can instead run its own shard of
the batch with one intra-op thread: one shard's memory-bound work overlaps the other's GEMMs,
as two worker processes do (BENCHMARKS.md, "Worker processes on the CPU"), but in one
process with one copy of the weights, targets and checkpoint. The shards step in lockstep, so
progress, checkpoints and Ctrl-C see one batch.

A shard is any run with `x`, `step()`, `hold()` and `state_dict()` (engine.StageRun). Every
tensor of its optimizer state with a leading dimension is per sample, so a batch's state is the
shards' states concatenated, and a checkpoint resumes with any split (or none).
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
from torch import Tensor

from ..gatys.engine import Run
from ..gatys.losses import Targets
from ..io.tensor_tree import map_tensors
from .settings import Settings


def shard_bounds(batch: int, runtime: Settings) -> list[tuple[int, int]]:
    """Sample ranges [lo, hi) of the shards: one per intra-op thread, as even as they go; a
    single range where splitting is off (CUDA, or split_batches False)."""
    shards = min(batch, torch.get_num_threads()) if runtime.split_batches else 1
    edges = [round(i * batch / shards) for i in range(shards + 1)]
    return list(itertools.pairwise(edges))


def rows(tree: Any, lo: int, hi: int) -> Any:
    """Samples lo..hi of a (nested) per-sample state; tensors without a leading dim and
    non-tensors are shared by every sample."""
    return map_tensors(lambda t: t[lo:hi] if t.dim() else t, tree)


def concat(trees: Sequence[Any]) -> Any:
    """The inverse of `rows`: the shards' states as one batch's."""
    first = trees[0]
    if isinstance(first, Tensor):
        return torch.cat(list(trees)) if first.dim() else first
    if isinstance(first, dict):
        return {k: concat([t[k] for t in trees]) for k in first}
    if isinstance(first, list | tuple):
        return type(first)(concat(parts) for parts in zip(*trees, strict=True))
    return first


@functools.cache
def _pool(threads: int) -> ThreadPoolExecutor:
    # A thread's first ATen call sets its intra-op threads to the process value of that
    # moment (torch's lazy init), undoing a count set before it whenever another thread (the
    # main one, a flow thread's first call) has just stored another: a shard's first step
    # could run on all the cores, and round otherwise. The pool's threads make that call
    # first, before any count is set.
    return ThreadPoolExecutor(threads, thread_name_prefix="shard",
                              initializer=torch.get_num_threads)


class ShardedRun:
    """Runs (shards of one batch, in sample order) stepped concurrently, each on its own
    thread with cores // shards intra-op threads."""

    def __init__(self, shards: Sequence[Run]):
        self.shards = list(shards)
        self.cores = torch.get_num_threads()
        self.threads = max(1, self.cores // len(self.shards))

    @property
    def x(self) -> Tensor:
        return torch.cat([shard.x.detach() for shard in self.shards])

    def _step(self, shard: Run) -> dict[str, Tensor]:
        torch.set_num_threads(self.threads)  # this thread's OpenMP team, for its shard's ops
        return shard.step()

    def step(self) -> dict[str, Tensor]:
        try:
            terms = list(_pool(len(self.shards)).map(self._step, self.shards))
        finally:
            torch.set_num_threads(self.cores)  # threads started later take the process value
        return {k: torch.cat([t[k] for t in terms]) for k in terms[0]}

    def hold(self, moving: Tensor) -> None:
        lo = 0
        for shard in self.shards:  # views: the loop's in-place updates reach every shard
            hi = lo + shard.x.shape[0]
            shard.hold(moving[lo:hi])
            lo = hi

    def state_dict(self) -> dict[str, Any]:
        return concat([shard.state_dict() for shard in self.shards])

    def _shard(self, i: int) -> tuple[Run, int]:
        for shard in self.shards:
            if i < shard.x.shape[0]:
                return shard, i
            i -= shard.x.shape[0]
        raise IndexError(i)

    def enter(self, i: int, x: Tensor, targets: Targets, state: dict[str, Any] | None
              ) -> None:
        shard, row = self._shard(i)
        shard.enter(row, x, targets, state)

    def row_state(self, i: int) -> dict[str, Any]:
        shard, row = self._shard(i)
        return shard.row_state(row)
