"""Reading ahead: the next jobs' inputs read on a thread of their own while the jobs in the
slots optimize, so a job entering a slot waits only for what is not read yet (on a GPU the
device waits with it: a phone photo's decode, an object store's round trip). Reading writes
nothing, so what was read ahead and never taken is simply dropped."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Generic, TypeVar

T = TypeVar("T")


def read_depth(device: str, threads: int, slots: int) -> int:
    """How many jobs to read ahead: a batch's worth where reading in line leaves cores idle
    (beside a GPU; a CPU worker with several threads, while one decodes), none for a CPU worker
    of one thread: there a reading thread only takes turns with the optimizer's (BENCHMARKS.md,
    Reading inputs)."""
    return slots if device != "cpu" or threads > 1 else 0


class ReadAhead(Generic[T]):
    def __init__(self, read: Callable[[int], T], depth: int):
        """`read(index)`: job `index`'s inputs; `depth`: how many jobs are read ahead (0:
        each is read when taken)."""
        self.read, self.depth = read, depth
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="read-ahead")
        self.ahead: dict[int, Future[T]] = {}

    def take(self, index: int, upcoming: Iterable[int]) -> T:
        """Job `index`'s read (made here if it was not read ahead; its error raised here),
        once the reads of the next `depth` jobs of `upcoming` have started."""
        future = self.ahead.pop(index, None)
        for later in itertools.islice(upcoming, self.depth):
            if later not in self.ahead:
                self.ahead[later] = self.pool.submit(self.read, later)
        return self.read(index) if future is None else future.result()

    def close(self) -> None:
        """Drop the reads not taken (the one under way ends first)."""
        for future in self.ahead.values():
            future.cancel()
        self.ahead.clear()
        self.pool.shutdown(wait=True)
