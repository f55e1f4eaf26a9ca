"""Whole iterations captured once as a CUDA graph and replayed.

Why: at batch 1 on a GPU an eager iteration costs several times its FLOPs floor, and the
difference is Python and kernel-launch time: a few hundred small kernels, each launched from
Python (BENCHMARKS.md, "Levers"). A replay launches them all at once. The shapes are fixed
within a stage (one image size and batch), so one capture serves every iteration of the stage.

With L-BFGS the capture is the whole iteration: objective, gradient, direction and step
(the optimizer's shapes fixed by `BatchedLBFGS.fix_shapes`), so a stage runs with no host
round trip but the loop's own checks. The first iterations run eagerly, on a side stream as
torch requires: cuDNN's autotuning, cuFFT's plans and the library handles' lazy set-up cannot
be captured. Adam's step is torch's: only its objective and gradient are captured.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import Tensor

from ..gatys.engine import StageRun, evaluate_and_backward
from ..gatys.lbfgs import BatchedLBFGS

Evaluate = Callable[[Tensor], dict[str, Tensor]]
T = TypeVar("T")


def on_side_stream(device: torch.device, work: Callable[[], T]) -> T:
    """`work` before any capture, on a side stream as torch requires: cuDNN's autotuning,
    cuFFT's plans and the library handles' lazy set-up cannot be captured."""
    main = torch.cuda.current_stream(device)
    side = torch.cuda.Stream(device)
    side.wait_stream(main)
    with torch.cuda.stream(side):
        result = work()
    main.wait_stream(side)
    return result


def capture(device: torch.device, work: Callable[[], T]) -> tuple[torch.cuda.CUDAGraph, T]:
    """A CUDA graph of `work` (which the capture records, not runs) and its outputs, which
    every replay rewrites in place."""
    # The warm-up's freed blocks stay cached for the side stream; give them back, or the
    # graph's own pool would double the stage's memory.
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        result = work()
    return graph, result


class GraphedGradient:
    """`graphed(x)` -> (loss terms, dL/dx) of `evaluate` at x, by replaying a CUDA graph.

    The graph reads a static copy of x and writes terms and gradient to static buffers; both
    are copied out, so a caller may keep them across calls."""

    def __init__(self, evaluate: Evaluate, like: Tensor, warmup: int = 2):
        self.x = like.detach().clone().requires_grad_(True)
        on_side_stream(like.device, lambda: [evaluate_and_backward(evaluate, self.x)
                                             for _ in range(warmup)])
        self.x.grad = None
        self.graph, self.terms = capture(like.device,
                                         lambda: evaluate_and_backward(evaluate, self.x))
        assert self.x.grad is not None  # allocated in the graph's pool: replays rewrite it

    def __call__(self, x: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        with torch.no_grad():
            self.x.copy_(x)
        self.graph.replay()
        return {k: v.clone() for k, v in self.terms.items()}, self.x.grad.clone()


# Eager iterations of each run before its capture (a resumed run warms up too).
WARMUP = 2


class GraphedIteration:
    """`graphed()` takes one whole step of `run` (an L-BFGS StageRun with fixed shapes) by
    replaying a CUDA graph of it, and returns a copy of its loss terms."""

    def __init__(self, run: StageRun):
        opt = run.opt
        self.opt = opt
        count = opt.count
        self.graph, self.terms = capture(run.x.device, lambda: StageRun.step(run))
        opt.count = count  # the capture ran the Python, not the kernels

    def __call__(self) -> dict[str, Tensor]:
        self.graph.replay()
        self.opt.advance()
        return {k: v.clone() for k, v in self.terms.items()}


@dataclass
class GraphedRun(StageRun):
    """A StageRun that replays CUDA graphs: of whole iterations with L-BFGS, of the objective
    and gradient with Adam."""

    graphed: GraphedGradient | None = None
    iteration: GraphedIteration | None = None
    warm: int = 0  # eager steps taken

    @classmethod
    def of(cls, run: StageRun) -> GraphedRun:
        if isinstance(run.opt, BatchedLBFGS):
            run.opt.fix_shapes()
            return cls(run.x, run.opt, run.evaluate, run.clamp)
        return cls(run.x, run.opt, run.evaluate, run.clamp,
                   graphed=GraphedGradient(run.evaluate, run.x))

    def closure(self) -> dict[str, Tensor]:
        if self.graphed is None:
            return super().closure()
        terms, self.x.grad = self.graphed(self.x)
        return terms

    def step(self) -> dict[str, Tensor]:
        if self.graphed is not None:
            return super().step()
        if self.iteration is None and self.warm >= WARMUP:
            self.iteration = GraphedIteration(self)
        if self.iteration is not None:
            return self.iteration()
        self.warm += 1
        return on_side_stream(self.x.device, super().step)
