"""One objective evaluation and its gradient, captured once as a CUDA graph and replayed.

Why: at batch 1 on a GPU an eager iteration costs several times its FLOPs floor, and the
difference is Python and kernel-launch time: a few hundred small kernels, each launched from
Python (BENCHMARKS.md, "Levers"). A replay
launches the whole captured forward + backward at once. The shapes are fixed within a stage
(one image size and batch), so one capture serves every iteration of the stage; the optimizer
step stays eager (its Python control flow changes with the history's fill).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ..gatys.engine import StageRun, evaluate_and_backward

Evaluate = Callable[[Tensor], dict[str, Tensor]]


class GraphedGradient:
    """`graphed(x)` -> (loss terms, dL/dx) of `evaluate` at x, by replaying a CUDA graph.

    The graph reads a static copy of x and writes terms and gradient to static buffers; both
    are copied out, so a caller may keep them across calls."""

    def __init__(self, evaluate: Evaluate, like: Tensor, warmup: int = 2):
        self.x = like.detach().clone().requires_grad_(True)
        # Warm-up outside capture, on a side stream as torch requires: cuDNN's autotuning and
        # the library handles' lazy set-up cannot be captured.
        main = torch.cuda.current_stream(like.device)
        side = torch.cuda.Stream(like.device)
        side.wait_stream(main)
        with torch.cuda.stream(side):
            for _ in range(warmup):
                evaluate_and_backward(evaluate, self.x)
        main.wait_stream(side)
        self.x.grad = None
        # The warm-up's freed blocks stay cached for the side stream; give them back, or the
        # graph's own pool would double the stage's memory.
        torch.cuda.synchronize(like.device)
        torch.cuda.empty_cache()
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.terms = evaluate_and_backward(evaluate, self.x)
        assert self.x.grad is not None  # allocated in the graph's pool: replays rewrite it

    def __call__(self, x: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        with torch.no_grad():
            self.x.copy_(x)
        self.graph.replay()
        return {k: v.clone() for k, v in self.terms.items()}, self.x.grad.clone()


@dataclass
class GraphedRun(StageRun):
    """A StageRun whose closure replays a CUDA graph of its objective and gradient."""

    graphed: GraphedGradient | None = None

    @classmethod
    def of(cls, run: StageRun) -> GraphedRun:
        return cls(run.x, run.opt, run.evaluate, run.clamp,
                   graphed=GraphedGradient(run.evaluate, run.x))

    def closure(self) -> dict[str, Tensor]:
        assert self.graphed is not None
        terms, self.x.grad = self.graphed(self.x)
        return terms
