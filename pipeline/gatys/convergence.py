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
    """Each sample's counters are its own (a row of every tensor), so a sample may enter a
    running batch (slots.py) with `reset_row` or continue there with `load_row`."""

    def __init__(self, tol: float, window: int, batch: int, device: torch.device):
        self.tol, self.window = tol, window
        self.active = torch.ones(batch, dtype=torch.bool, device=device)  # moves next step
        self.step = torch.zeros(batch, dtype=torch.int64, device=device)  # its iteration
        self.used = torch.zeros(batch, dtype=torch.int64, device=device)  # steps taken, all stages
        self.last = torch.zeros(batch, dtype=torch.int64, device=device)  # iteration of its image
        self.recent = torch.zeros(window + 1, batch, device=device)       # ring of lowest totals
        self.seen = torch.zeros(batch, dtype=torch.int64, device=device)  # totals in the ring

    @property
    def enabled(self) -> bool:
        return self.tol > 0

    def start_stage(self) -> None:
        self.active.fill_(True)
        self.seen.zero_()

    def update(self, total: Tensor) -> None:
        """After each sample's step, whose loss was `total`: count the step for the samples it
        moved, then hold those whose loss has flattened."""
        self.used += self.active
        self.last.copy_(torch.where(self.active, self.step + 1, self.last))
        self.step += 1
        if not self.enabled:
            return
        ring = self.window + 1
        total = total.detach().float()
        prev = self.recent.gather(0, ((self.seen - 1) % ring)[None])[0]
        total = torch.where(self.seen > 0, torch.minimum(total, prev), total)
        self.recent.scatter_(0, (self.seen % ring)[None], total[None])
        self.seen += 1
        before = self.recent.gather(0, (self.seen % ring)[None])[0]  # `window` steps earlier
        flat = (before - total) < self.tol * before.abs()
        self.active &= ~(flat & (self.seen > self.window))

    def all_stopped(self) -> bool:
        return self.enabled and not bool(self.active.any())

    def state_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name).clone() for name in ROWS}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name in ROWS:
            getattr(self, name).copy_(state[name])

    def row_state(self, i: int) -> dict[str, Any]:
        return {name: getattr(self, name)[..., i].clone() for name in ROWS}

    def load_row(self, i: int, state: dict[str, Any]) -> None:
        for name in ROWS:
            getattr(self, name)[..., i] = state[name]

    def reset_row(self, i: int, active: bool = True) -> None:
        """Row i as a sample that has taken no step; `active=False`: an empty row, held."""
        for name in ROWS:
            getattr(self, name)[..., i] = 0
        self.active[i] = active


ROWS = ("active", "step", "used", "last", "recent", "seen")  # each sample's: its row (column)
