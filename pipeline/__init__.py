"""style-pipeline: batch neural style transfer (Gatys et al., CVPR 2016). Everything the
`pipeline` command does, from Python: one image (`stylize`, `stylize_file`), a batch
(`stylize_batch`), a video (`stylize_video_file`), a manifest built (`build_manifest`) and run
(`run_manifest`), its report (`write_report`) and its state (`run_status`).

The names are imported when first used, so that what needs no torch (the CLI's `--help`,
`status`, `report`, manifests) starts without it."""

from __future__ import annotations

import importlib
from typing import Any

from . import collector
from .accel import cpu_heap
from .version import __version__ as __version__  # re-exported: __all__ is made below

cpu_heap.share_one_arena()  # before any library imported later starts a thread

# Each public name and the module it comes from.
_FROM = {"Regions": ".gatys.region_params", "RunOptions": ".bulk.run_options",
         "Runtime": ".accel.runtime", "RuntimeOptions": ".accel.options", "StyleJob": ".api",
         "StyleParams": ".gatys.params", "StyleResult": ".api", "build_manifest":
         ".bulk.make_manifest", "exit_code": ".bulk.runner", "run_manifest": ".bulk.runner",
         "run_status": ".report.status", "stylize": ".api", "stylize_batch": ".api",
         "stylize_file": ".api", "stylize_video_file": ".video.file",
         "VideoParams": ".video.params",
         "write_report": ".report"}


def __getattr__(name: str) -> Any:
    if name not in _FROM:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    with collector.paused():
        value = getattr(importlib.import_module(_FROM[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_FROM})


__all__ = sorted([*_FROM, "__version__"])
