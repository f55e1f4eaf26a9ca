"""What the local distributor's fork server imports once for every worker it forks (the worker,
torch, ONNX Runtime): with the collector paused, as the CLI's commands do, since its full passes
over torch's objects delayed every run's first worker (BENCHMARKS.md, "Start-up"); then frozen,
so that the workers' collections leave the pages they share with the server alone (Python's
gc.freeze before fork)."""

import gc

from ..collector import paused

with paused():
    import onnxruntime  # noqa: F401

    from .distributors import local  # noqa: F401
gc.freeze()
