"""How a stage's run starts on this runtime: the accelerators wrapped around engine.StageRun."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from torch import Tensor

from ..gatys.engine import Run, Stage, StageRun
from ..gatys.params import StyleParams
from ..gatys.vgg import VGG19Trunk
from .cpu_shards import ShardedRun, rows, shard_bounds
from .cuda_graph import GraphedRun
from .settings import Settings


def start_run(trunk: VGG19Trunk, x0: Tensor, stage: Stage, start: int,
              opt_state: dict[str, Any] | None, params: StyleParams, *, runtime: Settings) -> Run:
    """A StageRun; on a multi-core CPU one per core on its share of the batch (cpu_shards.py);
    with CUDA graphs and a stage run whole, one that replays each iteration as a graph (with
    L-BFGS the whole iteration, with Adam the objective and gradient: cuda_graph.py).
    `runtime` is the Runtime the engine computes with; its settings decide which run it gets."""
    bounds = shard_bounds(x0.shape[0], runtime)
    if len(bounds) > 1:
        return ShardedRun([
            StageRun.start(trunk, x0[lo:hi], replace(stage, targets=stage.targets.rows(lo, hi)),
                           start, None if opt_state is None else rows(opt_state, lo, hi),
                           params, runtime)
            for lo, hi in bounds])
    run = StageRun.start(trunk, x0, stage, start, opt_state, params, runtime)
    # By blocks, an iteration is many forward/backward passes of a few crop shapes: left eager.
    return GraphedRun.of(run) if runtime.cuda_graphs and not stage.block else run
