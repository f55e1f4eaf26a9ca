"""The loss trace of a batch: every job's loss terms every `every` iterations.

Points are kept on the device (a copy of four [N] tensors) and read once at the end or at a
checkpoint, so tracing adds no host synchronization to an iteration. A point is kept for a job
only while the job moves (EarlyStop holds the others); its last point is the final objective,
re-evaluated in fp32, at the iteration of its final image.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from .trace import TERMS, point, with_final


class LossTrace:
    def __init__(self, every: int):
        self.every = every
        # each sample's iteration, stage, terms [4, N], which samples the point is for
        self.points: list[tuple[list[int], int, Tensor, Tensor]] = []

    def record(self, iterations: Sequence[int], stage: int, terms: dict[str, Tensor],
               moving: Tensor) -> None:
        """The terms of the images after `iterations[s]` steps of each sample s, for the
        samples `moving` on whose iteration is a multiple of `every`."""
        due = [self.every > 0 and it % self.every == 0 for it in iterations]
        if not any(due):
            return
        keep = moving.clone() if all(due) else moving & torch.tensor(due, device=moving.device)
        values = torch.stack([terms[k].detach().double() for k in TERMS])
        self.points.append((list(iterations), stage, values, keep))

    def rows(self, final_iteration: Tensor, stage: int, final: dict[str, Tensor]
             ) -> list[list[dict[str, Any]]]:
        """Per sample, its points in order, then its final objective at `final_iteration`."""
        n = final["total"].shape[0]
        return [with_final(points, end, stage, values) for points, end, values in zip(
            self.samples(range(n)), final_iteration.cpu().tolist(),
            torch.stack([final[k].detach().double() for k in TERMS], 1).cpu().tolist(),
            strict=True)]

    def samples(self, samples: Sequence[int], since: int = 0) -> list[list[dict[str, Any]]]:
        """The points of these samples from point `since` on (one read from the device)."""
        per_sample: list[list[dict[str, Any]]] = [[] for _ in samples]
        kept = self.points[since:]
        if not kept:
            return per_sample
        values = torch.stack([v for _, _, v, _ in kept]).cpu().tolist()
        moving = torch.stack([m for _, _, _, m in kept]).cpu().tolist()
        for (its, st, _, _), vals, mov in zip(kept, values, moving, strict=True):
            for points, s in zip(per_sample, samples, strict=True):
                if mov[s]:
                    points.append(point(its[s], st, [v[s] for v in vals]))
        return per_sample

    def state_dict(self) -> dict[str, Any]:
        return {"every": self.every, "points": list(self.points)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.every, self.points = state["every"], list(state["points"])
