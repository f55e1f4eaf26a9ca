"""The local distributor's fork server: the process its workers fork from, which imports their
modules once (fork_preload.py). `start_early` starts it before the driver's own imports and
its manifest check, so that the server's imports (torch, ONNX Runtime: most of a second) run
beside them on another core instead of after them, when the first worker starts."""

from __future__ import annotations

import multiprocessing as mp
import sys
from multiprocessing import forkserver
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
