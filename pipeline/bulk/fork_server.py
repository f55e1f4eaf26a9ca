"""The local distributor's fork server: the process its workers fork from, which imports their
modules once (fork_preload.py). `start_early` starts it before the driver's own imports and
its manifest check, so that the server's imports (torch, ONNX Runtime: most of a second) run
beside them on another core instead of after them, when the first worker starts."""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import sys
from collections.abc import Iterator
from multiprocessing import forkserver, spawn
from typing import Any

PRELOAD = ["pipeline.bulk.fork_preload"]
# multiprocessing's resource tracker outlives a driver killed alone (kill -9 of its pid, the
# OOM killer), frees the queues' semaphores, and warns about them with a file path and line:
# noise under a run whose checkpoints are what matters. It takes this process's -W options.
_QUIET_TRACKER = "ignore:resource_tracker:UserWarning"


def fork_context() -> Any:
    """multiprocessing's forkserver context, preloading the workers' modules."""
    if _QUIET_TRACKER not in sys.warnoptions:  # before the tracker starts
        sys.warnoptions.append(_QUIET_TRACKER)
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    return ctx


def start_early() -> None:
    """Start the server now; it imports in the background (the first worker's start waits for
    it). Nothing is lost where the run is then refused: the server leaves with this process."""
    fork_context()
    forkserver.ensure_running()


@contextlib.contextmanager
def without_main() -> Iterator[None]:
    """Processes started inside it skip the driver's main module. multiprocessing runs a
    script's main module again in each child (as __mp_main__), so that objects pickled by
    reference to it resolve there; a worker is given none (only the package's own), and a
    user's script that calls run_manifest without an `if __name__ == "__main__"` guard would
    start its whole run again in every worker, which then died on the folder's lock. The
    stdlib has no option for it: the data its child prepares from is filtered while we start."""
    prepare = spawn.get_preparation_data

    def filtered(name: str) -> dict[str, Any]:
        data = prepare(name)
        data.pop("init_main_from_path", None)
        data.pop("init_main_from_name", None)
        return data

    spawn.get_preparation_data = filtered
    try:
        yield
    finally:
        spawn.get_preparation_data = prepare
