"""Importing torch makes a great many objects, none of them garbage: the collector's full passes
over them during the import are time lost by every process that computes (BENCHMARKS.md,
"Start-up"). Only the modules that compute import torch, and they are imported with the
collector paused."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def paused() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
