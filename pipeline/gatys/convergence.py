"""Early stopping per sample: a job stops when its objective has stopped improving.

The rule is artistic-videos' `-tol_loss_relative`: stop when the total loss improved by less
than `tol` (relative) over the last `window` iterations, measured on its lowest value so far
in the stage: fixed-step L-BFGS has transient spikes, and a spike that lands `window` steps
after a low point read as "no progress" once stopped a job mid-descent, holding the spiked
image (7% above where it was heading). In a batch every job decides alone:
a stopped job is held (its pixels stop moving; the optimizer takes no step for it), the others
go on, and a stage ends when all have stopped. So a job's result is the one it would have had
alone. The decision never leaves the device: the loop reads `all_stopped()` on the host only
as often as it checks for inf/NaN.

The loss of step i is that of the images before it, so a job that meets the rule at step i
stops with the images after it: i + 1 steps. With coarse-to-fine, each stage decides anew.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


class EarlyStop:
    def __init__(self, tol: float, window: int, batch: int, device: torch.device):
        self.tol, self.window = tol, window
        self.active = torch.ones(batch, dtype=torch.bool, device=device)  # moves next step
        self.used = torch.zeros(batch, dtype=torch.int64, device=device)  # steps taken, all stages
        self.last = torch.zeros(batch, dtype=torch.int64, device=device)  # iteration of its image
        self.recent = torch.zeros(window + 1, batch, device=device)       # ring of lowest totals
        self.seen = 0  # totals in the ring, this stage

    @property
    def enabled(self) -> bool:
        return self.tol > 0

    def start_stage(self) -> None:
        self.active.fill_(True)
        self.seen = 0

    def update(self, iteration: int, total: Tensor) -> None:
        """After step `iteration` (0-based), whose loss was `total`: count the step for the
        samples it moved, then hold those whose loss has flattened."""
        self.used += self.active
        self.last.masked_fill_(self.active, iteration + 1)
        if not self.enabled:
            return
        ring = self.window + 1
        total = total.detach().float()
        if self.seen:
            total = torch.minimum(total, self.recent[(self.seen - 1) % ring])
        self.recent[self.seen % ring] = total
        self.seen += 1
        if self.seen > self.window:
            before = self.recent[self.seen % ring]  # the lowest total `window` steps earlier
            self.active &= (before - total) >= self.tol * before.abs()

    def all_stopped(self) -> bool:
        return self.enabled and not bool(self.active.any())

    def state_dict(self) -> dict[str, Any]:
        return {"active": self.active.clone(), "used": self.used.clone(),
                "last": self.last.clone(), "recent": self.recent.clone(), "seen": self.seen}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name in ("active", "used", "last", "recent"):
            getattr(self, name).copy_(state[name])
        self.seen = state["seen"]
