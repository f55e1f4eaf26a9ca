"""The loss trace of a batch: every job's loss terms every `every` iterations.

Points are kept on the device (a copy of four [N] tensors) and read once at the end or at a
checkpoint, so tracing adds no host synchronization to an iteration. A point is kept for a job
only while the job moves (EarlyStop holds the others); its last point is the final objective,
re-evaluated in fp32, at the iteration of its final image.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import Tensor

from ..io.files import atomic_path

TERMS = ("total", "content", "style", "tv")
# Every 10 iterations: a smooth curve over 400, and no cost an iteration would show.
TRACE_EVERY = 10
TRACE_EVERY_HELP = "Record the loss terms every N iterations (and the final ones); 0 = none."


class LossTrace:
    def __init__(self, every: int):
        self.every = every
        self.points: list[tuple[int, int, Tensor, Tensor]] = []  # iteration, stage, [4, N], moving

    def record(self, iteration: int, stage: int, terms: dict[str, Tensor], moving: Tensor
               ) -> None:
        """The terms of the images after `iteration` steps, for the samples `moving` on."""
        if self.every and iteration % self.every == 0:
            values = torch.stack([terms[k].detach().double() for k in TERMS])
            self.points.append((iteration, stage, values, moving.clone()))

    def rows(self, final_iteration: Tensor, stage: int, final: dict[str, Tensor]
             ) -> list[list[dict[str, Any]]]:
        """Per sample, its points in order, then its final objective at `final_iteration`."""
        n = final["total"].shape[0]
        per_sample: list[list[dict[str, Any]]] = [[] for _ in range(n)]
        if self.points:
            values = torch.stack([v for _, _, v, _ in self.points]).cpu().tolist()
            moving = torch.stack([m for _, _, _, m in self.points]).cpu().tolist()
            for (it, st, _, _), vals, mov in zip(self.points, values, moving, strict=True):
                for s in range(n):
                    if mov[s]:
                        per_sample[s].append(_point(it, st, [v[s] for v in vals]))
        ends = final_iteration.cpu().tolist()
        last = torch.stack([final[k].detach().double() for k in TERMS]).cpu().tolist()
        for s in range(n):
            if per_sample[s] and per_sample[s][-1]["iteration"] == ends[s]:
                per_sample[s].pop()  # the fp32 final replaces the same iteration's point
            per_sample[s].append(_point(ends[s], stage, [v[s] for v in last]))
        return per_sample

    def state_dict(self) -> dict[str, Any]:
        return {"every": self.every, "points": list(self.points)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.every, self.points = state["every"], list(state["points"])


def _point(iteration: int, stage: int, values: list[float]) -> dict[str, Any]:
    return {"iteration": iteration, "stage": stage, **dict(zip(TERMS, values, strict=True))}


# A video job's trace has a point per frame: `frame` set, `iteration` the frame's iterations,
# and its `temporal` term; both are null for an image's points.
SCHEMA = pa.schema([("key", pa.string()), ("iteration", pa.int64()), ("stage", pa.int64()),
                    *((name, pa.float64()) for name in TERMS), ("frame", pa.int64()),
                    ("temporal", pa.float64())])
Traces = dict[str, list[dict[str, Any]]]  # job key -> points in iteration (or frame) order


def write_traces(path: Path, traces: Traces) -> None:
    """One Parquet file of these traces, atomically."""
    rows = [{"key": key, **point} for key, points in traces.items() for point in points]
    with atomic_path(path) as tmp:
        pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), tmp)


def read_traces(path: Path) -> Traces:
    traces: Traces = {}
    for row in pq.read_table(path).to_pylist():
        key = row.pop("key")
        traces.setdefault(key, []).append({k: v for k, v in row.items() if v is not None})
    return traces
