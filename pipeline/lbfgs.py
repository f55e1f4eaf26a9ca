"""L-BFGS for a batch of independent problems.

`torch.optim.LBFGS` treats its parameters as one flat vector: one history, one step size, one
curvature test for the whole batch, so batching jobs would couple them. Here every quantity is
per sample: history pairs are [N, D], dot products are batched ([N]), and the step size, the
curvature test and the convergence test are per sample. Each step is one objective evaluation
with a fixed step (lr, the first step scaled by 1/|g|_1) and no line search, exactly as
`torch.optim.LBFGS(max_iter=1)` (pastiche) and neural-style's optim.lbfgs do.

Departures from torch, both with `max_step` set (the engine sets it): torch's first step,
1/|g|_1, moves pixels by ~1e-9, so the first curvature pair y = g1 - g0 is mostly float
rounding noise and the second step (lr = 1 on that curvature) overshoots wildly (the loss
jumps by 1e6x) and is chaotic: fp32 reassociation changes it. Instead the first step moves the
largest coordinate by `max_step`, and every later step is capped at `max_step` per coordinate.
And when a sample fails the curvature test (y.s <= 1e-10) the pair still
takes a history slot, with rho = 0 so it contributes nothing. This keeps every slot a plain
[N, D] tensor and each sample independent of the others.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor


def _dot(a: Tensor, b: Tensor) -> Tensor:
    """Per-sample dot products [N, D] x [N, D] -> [N]. On CPU one torch.dot per sample: a
    batched GEMV (bmm of [N, 1, D] x [N, D, 1]) takes a slow path there for N > 1, 40x slower
    per sample at N = 4, which made the two-loop 10x slower per image in a batch of 4."""
    if a.device.type == "cpu":
        return torch.stack([torch.dot(u, v) for u, v in zip(a, b, strict=True)])
    return torch.linalg.vecdot(a, b)


class BatchedLBFGS:
    def __init__(self, x: Tensor, lr: float = 1.0, history: int = 100,
                 max_step: float | None = None, tolerance_grad: float = 1e-7,
                 tolerance_change: float = 1e-9):
        if not x.is_leaf or not x.requires_grad:
            raise ValueError("x must be a leaf tensor that requires grad")
        self.x = x
        self.lr = lr
        self.history = history
        self.max_step = max_step
        self.tolerance_grad = tolerance_grad
        self.tolerance_change = tolerance_change
        self.n_iter = 0
        self.s: list[Tensor] = []         # steps, each [N, D]
        self.y: list[Tensor] = []         # gradient changes, each [N, D]
        self.rho: list[Tensor] = []       # 1 / (y.s) or 0 for a skipped pair, each [N]
        self.h_diag = x.new_ones(x.shape[0])
        self.d: Tensor | None = None      # last direction [N, D]
        self.t: Tensor | None = None      # last step size actually taken [N]
        self.prev_grad: Tensor | None = None

    def _direction(self, g: Tensor) -> Tensor:
        """Two-loop recursion, batched over samples."""
        y = g - self.prev_grad
        s = self.d * self.t[:, None]
        ys = _dot(y, s)
        ok = ys > 1e-10
        if len(self.s) == self.history:
            self.s.pop(0), self.y.pop(0), self.rho.pop(0)
        self.s.append(s)
        self.y.append(y)
        self.rho.append(torch.where(ok, 1.0 / torch.where(ok, ys, 1.0), 0.0))
        self.h_diag = torch.where(ok, ys / _dot(y, y).clamp_min(1e-30), self.h_diag)

        q = g.neg()
        alpha: list[Tensor] = []
        for s_i, y_i, rho_i in zip(reversed(self.s), reversed(self.y), reversed(self.rho),
                                   strict=True):
            a = _dot(s_i, q) * rho_i
            q.addcmul_(y_i, a[:, None], value=-1.0)  # one fused pass, no temporaries
            alpha.append(a)
        r = q.mul_(self.h_diag[:, None])
        for s_i, y_i, rho_i, a in zip(self.s, self.y, self.rho, reversed(alpha), strict=True):
            b = _dot(y_i, r) * rho_i
            r.addcmul_(s_i, (a - b)[:, None])
        return r

    @torch.no_grad()
    def step(self, closure: Callable[[], Any]) -> Any:
        """`closure` zeroes x.grad, evaluates the objective, calls backward and returns anything
        (returned as is). Converged samples, and samples whose direction is not a descent
        direction, do not move."""
        with torch.enable_grad():
            result = closure()
        n = self.x.shape[0]
        g = self.x.grad.reshape(n, -1)
        if self.n_iter == 0:
            d = -g
            if self.max_step is None:
                t = (1.0 / g.abs().sum(1).clamp_min(1e-30)).clamp(max=1.0) * self.lr
            else:  # a gradient step whose largest coordinate change is max_step
                t = self.max_step / g.abs().amax(1).clamp_min(1e-30)
        else:
            d = self._direction(g)
            t = torch.full((n,), self.lr, device=g.device, dtype=g.dtype)
        move = (g.abs().amax(1) > self.tolerance_grad) & (_dot(g, d) < -self.tolerance_change)
        t = torch.where(move, t, 0.0)
        if self.max_step is not None:
            t = t * (self.max_step / (d.abs().amax(1) * t).clamp_min(1e-30)).clamp(max=1.0)
        self.x.add_((d * t[:, None]).view_as(self.x))
        self.d, self.t, self.prev_grad = d, t, g.clone()
        self.n_iter += 1
        return result

    def state_dict(self) -> dict[str, Any]:
        return {"n_iter": self.n_iter, "s": self.s, "y": self.y, "rho": self.rho,
                "h_diag": self.h_diag, "d": self.d, "t": self.t, "prev_grad": self.prev_grad,
                "lr": self.lr, "history": self.history}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            setattr(self, key, value)
