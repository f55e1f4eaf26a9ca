"""style-pipeline: batch neural style transfer (Gatys et al., CVPR 2016). Everything the
`pipeline` command does, from Python: one image (`stylize`, `stylize_file`), a batch
(`stylize_batch`), a manifest built (`build_manifest`) and run (`run_manifest`), its report
(`write_report`)."""

import gc

# Importing torch makes a great many objects, none of them garbage: the collector's full passes
# over them during the import are time lost by every process (BENCHMARKS.md, "Start-up").
_collecting = gc.isenabled()
gc.disable()
try:
    from .accel import cpu_heap

    cpu_heap.share_one_arena()  # before any library imported below starts a thread
    from .accel.runtime import Runtime, RuntimeOptions
    from .api import Regions, StyleJob, StyleResult, stylize, stylize_batch, stylize_file
    from .bulk.make_manifest import build_manifest
    from .bulk.runner import RunOptions, exit_code, run_manifest
    from .gatys.params import StyleParams
    from .report import write_report
    from .version import __version__
finally:
    if _collecting:
        gc.enable()
del _collecting

__all__ = ["Regions", "RunOptions", "Runtime", "RuntimeOptions", "StyleJob", "StyleParams",
           "StyleResult", "__version__", "build_manifest", "exit_code", "run_manifest",
           "stylize", "stylize_batch", "stylize_file", "write_report"]
