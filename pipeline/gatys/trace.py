"""The loss trace's format: each job's loss terms every `every` iterations, written and read
as Parquet (a job's read back as `Points`). Recorded on the device by loss_trace.py.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, overload

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..io.files import atomic_path

TERMS = ("total", "content", "style", "tv")
# Every 10 iterations: a smooth curve over 400, and no cost an iteration would show.
TRACE_EVERY = 10
TRACE_EVERY_HELP = "Record the loss terms every N iterations (and the final ones); 0 = none."


def with_final(points: list[dict[str, Any]], end: int, stage: int, values: Sequence[float]
               ) -> list[dict[str, Any]]:
    """A sample's points ended by its final objective at iteration `end` (which replaces the
    same iteration's point: the final one is in fp32)."""
    if points and points[-1]["iteration"] == end:
        points = points[:-1]
    return [*points, point(end, stage, list(values))]


def point(iteration: int, stage: int, values: list[float]) -> dict[str, Any]:
    return {"iteration": iteration, "stage": stage, **dict(zip(TERMS, values, strict=True))}


# A video job's trace has a point per frame: `frame` set, `iteration` the frame's iterations,
# and its `temporal` term; both are null for an image's points.
SCHEMA = pa.schema([("key", pa.string()), ("iteration", pa.int64()), ("stage", pa.int64()),
                    *((name, pa.float64()) for name in TERMS), ("frame", pa.int64()),
                    ("temporal", pa.float64())])
Traces = dict[str, list[dict[str, Any]]]  # job key -> points in iteration (or frame) order


def write_traces(path: Path | str, traces: Traces) -> None:
    """One Parquet file of these traces, atomically (a URL: as one object)."""
    rows = [{"key": key, **point} for key, points in traces.items() for point in points]
    with atomic_path(path) as tmp:
        pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), tmp)


class Points(Sequence[dict[str, Any]]):
    """A job's trace as read back: one array of numbers, not a dict per point, because a
    run's report holds the trace of every job (BENCHMARKS.md, "Manifests"). Indexing and
    iterating give the points as the engine wrote them."""

    __slots__ = ("names", "values")

    def __init__(self, names: tuple[str, ...], values: np.ndarray):
        self.names, self.values = names, values  # values: [points, names]; NaN: absent

    def column(self, name: str) -> np.ndarray:
        return self.values[:, self.names.index(name)]

    def has(self, name: str) -> bool:
        """Whether some point has this column (a video's `frame`, its `temporal` term)."""
        return name in self.names and not np.isnan(self.column(name)).all()

    def __len__(self) -> int:
        return len(self.values)

    @overload
    def __getitem__(self, index: int) -> dict[str, Any]: ...
    @overload
    def __getitem__(self, index: slice) -> list[dict[str, Any]]: ...
    def __getitem__(self, index: int | slice) -> dict[str, Any] | list[dict[str, Any]]:
        if isinstance(index, slice):
            return [self._point(row) for row in self.values[index].tolist()]
        return self._point(self.values[index].tolist())

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return map(self._point, self.values.tolist())

    def __eq__(self, other: object) -> bool:
        return list(self) == list(other) if isinstance(other, Sequence) else NotImplemented

    def __repr__(self) -> str:
        return f"Points({list(self)!r})"

    def _point(self, row: list[float]) -> dict[str, Any]:
        return {name: int(v) if name in _WHOLE else v
                for name, v in zip(self.names, row, strict=True) if v == v}


_WHOLE = {f.name for f in SCHEMA if pa.types.is_integer(f.type)}


def read_traces(path: Path) -> dict[str, Points]:
    """Each job's points in one file, in the order written."""
    return traces_of(pq.read_table(path))


def traces_of(table: pa.Table) -> dict[str, Points]:
    """Each job's points in a table of SCHEMA's columns (older ones may lack some)."""
    names = tuple(n for n in SCHEMA.names[1:] if n in table.column_names
                  and table[n].null_count < len(table))  # a column no job of the file has
    values = np.column_stack([table[n].cast(pa.float64()).to_numpy(zero_copy_only=False)
                              for n in names]) if len(table) else np.empty((0, len(names)))
    keys = table["key"].combine_chunks().dictionary_encode()
    codes = keys.indices.to_numpy(zero_copy_only=False)
    order = np.argsort(codes, kind="stable")  # each job's rows together, in order
    values = values[order]
    ends = np.searchsorted(codes[order], range(1, len(keys.dictionary) + 1)).tolist()
    return {key: Points(names, values[start:end]) for key, start, end in
            zip(keys.dictionary.to_pylist(), [0, *ends][:-1], ends, strict=True)}
