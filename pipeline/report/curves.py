"""A job's loss trace as a small inline SVG: the loss terms against iterations (against frames,
with the temporal term, for a video job), log scale.

Small enough to draw thousands per page (a few hundred bytes each, no library call per job):
a polyline per term over at most six decades, decade grid lines labelled 1e3, 1e4, ..., and
a dashed line where a coarse-to-fine stage begins.
"""

from __future__ import annotations

import math
from html import escape
from typing import Any

import numpy as np

from ..gatys.trace import Points

COLORS = {"total": "#111", "content": "#1f77b4", "style": "#d62728", "tv": "#2ca02c",
          "temporal": "#9467bd"}
WIDTH, HEIGHT, LEFT, BOTTOM = 240, 90, 30, 14
FLOOR_DECADES = 6


def loss_svg(trace: Points | None) -> str:
    """The SVG markup; empty when there is nothing to draw."""
    if trace is None or "total" not in trace.names:
        return ""
    total = trace.column("total")
    rows = trace.values[total > 0]  # NaN compares false: no point without a total
    if len(rows) < 2:
        return ""
    along, unit = ("frame", "frames") if trace.has("frame") else ("iteration", "it")
    at = rows[:, trace.names.index(along)]
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = {t: np.log10(rows[:, trace.names.index(t)]) for t in COLORS if trace.has(t)}
    drawn = np.concatenate([v[np.isfinite(v)] for v in logs.values()])  # the terms > 0
    # Six decades at most: a term that starts at ~0 (the content loss of a content-initialized
    # image) would otherwise flatten every other curve; lower values sit on the bottom edge.
    hi = math.ceil(drawn.max())
    lo = min(max(math.floor(drawn.min()), hi - FLOOR_DECADES), hi - 1)
    first, last = int(at[0]), int(max(at[-1], at[0] + 1))
    plot_w, plot_h = WIDTH - LEFT - 4, HEIGHT - BOTTOM - 4

    def x(it: Any) -> Any:
        return LEFT + (it - first) / (last - first) * plot_w

    def y(log: Any) -> Any:
        return 4 + (hi - np.maximum(log, lo)) / (hi - lo) * plot_h

    parts = [f'<svg class="curve" xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" '
             f'height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" role="img">',
             f"<title>{escape(_summary(trace, rows, along))}</title>"]
    step = max(1, (hi - lo) // 4)
    for decade in range(lo, hi + 1, step):
        parts.append(f'<line x1="{LEFT}" x2="{WIDTH - 4}" y1="{y(decade):.1f}" '
                     f'y2="{y(decade):.1f}" stroke="#ddd"/>'
                     f'<text x="{LEFT - 2}" y="{y(decade) + 3:.1f}" text-anchor="end">'
                     f"1e{decade}</text>")
    stage = rows[:, trace.names.index("stage")]
    for start in at[1:][stage[1:] != stage[:-1]]:  # where a coarse-to-fine stage begins
        parts.append(f'<line x1="{x(start):.1f}" x2="{x(start):.1f}" y1="4" '
                     f'y2="{HEIGHT - BOTTOM}" stroke="#999" stroke-dasharray="3 2"/>')
    xs = x(at)
    for term, log in logs.items():
        shown = np.isfinite(log)
        pairs = np.column_stack([xs[shown], y(log[shown])]).ravel().tolist()
        if pairs:  # one format call a curve: thousands of curves make a page
            coords = " ".join(["%.1f,%.1f"] * (len(pairs) // 2)) % tuple(pairs)
            parts.append(f'<polyline class="{term}" fill="none" stroke="{COLORS[term]}" '
                         f'stroke-width="{1.6 if term == "total" else 1}" points="{coords}"/>')
    parts.append(f'<text x="{LEFT}" y="{HEIGHT - 2}">{first}</text>'
                 f'<text x="{WIDTH - 4}" y="{HEIGHT - 2}" text-anchor="end">{last} {unit}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _summary(trace: Points, rows: np.ndarray, along: str) -> str:
    total, at = trace.names.index("total"), trace.names.index(along)
    return (f"total loss {rows[0, total]:.4g} at {along} {rows[0, at]:.0f} -> "
            f"{rows[-1, total]:.4g} at {rows[-1, at]:.0f}")
