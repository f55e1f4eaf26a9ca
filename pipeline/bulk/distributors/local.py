"""The local distributor: one worker process per device entry of this machine.

Workers fork from multiprocessing's fork server, which imports the worker's modules (torch,
ONNX Runtime) once for the driver's lifetime: a run of many CPU workers, a worker started
again after it died, and every later run of a Python session start in a fraction of a second
instead of importing torch each. Nothing touches CUDA before the fork. A worker takes the
driver's environment of the moment it starts (the server's is that of the first run).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import signal
from collections.abc import Callable
from typing import Any

from ..distribute import Slot
from ..events import Event, Exited, Lost
from ..fork_server import fork_context, without_main
from ..jobs import Batch
from ..worker import WorkerConfig, forward_logs, start_worker

DRIVER_CHECK_S = 1.0  # how often a worker waiting for a batch checks that its driver lives


def _how(code: int | None) -> str:
    return f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"


class LocalDistributor:
    """Workers are processes; batches go to each through its own queue and events come back
    through one shared queue. A worker that finds its parent gone (killed) checkpoints and
    leaves, or, waiting for a batch, just leaves."""

    def __init__(self, slots: list[Slot], config: WorkerConfig):
        self.slots, self.config = slots, config
        self._ctx = fork_context()
        self._events, self._stop = self._ctx.Queue(), self._ctx.Event()
        self._procs: dict[int, Any] = {}
        self._tasks: dict[int, Any] = {}
        self._lost: set[int] = set()

    def start(self, wid: int) -> None:
        tasks = self._ctx.Queue()
        tasks.cancel_join_thread()  # a stopped run must not wait to hand over its batches
        slot = self.slots[wid]
        proc = self._ctx.Process(target=_process, name=f"pipeline-worker-{wid}", daemon=True,
                                 args=(wid, slot.device, slot.threads, self.config, tasks,
                                       self._events, self._stop, dict(os.environ)))
        with without_main():
            proc.start()
        self._procs[wid], self._tasks[wid] = proc, tasks
        self._lost.discard(wid)

    def send(self, wid: int, batch: Batch | None) -> None:
        self._tasks[wid].put(batch)

    def events(self, timeout: float) -> list[Event]:
        try:
            found = [self._events.get(timeout=timeout)]
        except queue.Empty:  # quiet: is everyone still alive?
            dead = [w for w, p in self._procs.items() if w not in self._lost and not p.is_alive()]
            self._lost.update(dead)
            return [Lost(w, _how(self._procs[w].exitcode)) for w in dead]
        while True:
            try:
                found.append(self._events.get_nowait())
            except queue.Empty:
                return found

    def restartable(self, wid: int) -> bool:
        return True

    def stop(self) -> None:
        self._stop.set()

    def kill(self) -> None:
        for proc in self._procs.values():
            proc.terminate()

    def close(self) -> None:
        for proc in self._procs.values():
            proc.join(timeout=30)


def _process(wid: int, device: str, threads: int, config: WorkerConfig, tasks: Any,
             events: Any, stop: Any, environ: dict[str, str]) -> None:
    """A worker process. Ctrl-C is the driver's to handle: it sets `stop`. The driver's end of
    a pipe (parent_process's sentinel) closes when the driver dies, however it died."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ.clear()
    os.environ.update(environ)
    forward_logs(wid, events.put)
    driver = mp.parent_process()

    def driver_gone() -> bool:
        return driver is None or not driver.is_alive()

    worker = start_worker(wid, device, threads, config, events.put,
                          lambda: stop.is_set() or driver_gone())
    if worker is None:
        return
    while (batch := _next_batch(tasks, driver_gone)) is not None:
        if not worker.serve(batch):
            return
    if not driver_gone():
        events.put(Exited(wid))


def _next_batch(tasks: Any, driver_gone: Callable[[], bool]) -> Batch | None:
    """The next batch, or None when the run ends or its driver is gone: a worker waiting
    for work while its driver is killed (kill -9, the OOM killer) leaves too, instead of
    holding its memory, or its GPU's, forever."""
    while True:
        try:
            return tasks.get(timeout=DRIVER_CHECK_S)
        except queue.Empty:
            if driver_gone():
                return None
