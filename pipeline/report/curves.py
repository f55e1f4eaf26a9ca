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

COLORS = {"total": "#111", "content": "#1f77b4", "style": "#d62728", "tv": "#2ca02c",
          "temporal": "#9467bd"}
WIDTH, HEIGHT, LEFT, BOTTOM = 240, 90, 30, 14
FLOOR_DECADES = 6


def loss_svg(trace: list[dict[str, Any]]) -> str:
    """The SVG markup; empty when there is nothing to draw."""
    points = [p for p in trace if p["total"] and p["total"] > 0]
    if len(points) < 2:
        return ""
    along, unit = ("frame", "frames") if "frame" in points[0] else ("iteration", "it")
    values = [p[k] for p in points for k in COLORS if p.get(k) and p[k] > 0]
    # Six decades at most: a term that starts at ~0 (the content loss of a content-initialized
    # image) would otherwise flatten every other curve; lower values sit on the bottom edge.
    hi = math.ceil(math.log10(max(values)))
    lo = min(max(math.floor(math.log10(min(values))), hi - FLOOR_DECADES), hi - 1)
    first, last = points[0][along], max(points[-1][along], points[0][along] + 1)
    plot_w, plot_h = WIDTH - LEFT - 4, HEIGHT - BOTTOM - 4

    def x(it: float) -> float:
        return LEFT + (it - first) / (last - first) * plot_w

    def y(v: float) -> float:
        return 4 + (hi - max(math.log10(v), lo)) / (hi - lo) * plot_h

    parts = [f'<svg class="curve" xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" '
             f'height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" role="img">',
             f"<title>{escape(_summary(points, along))}</title>"]
    step = max(1, (hi - lo) // 4)
    for decade in range(lo, hi + 1, step):
        parts.append(f'<line x1="{LEFT}" x2="{WIDTH - 4}" y1="{y(10**decade):.1f}" '
                     f'y2="{y(10**decade):.1f}" stroke="#ddd"/>'
                     f'<text x="{LEFT - 2}" y="{y(10**decade) + 3:.1f}" text-anchor="end">'
                     f"1e{decade}</text>")
    stages = {p["stage"]: p[along] for p in reversed(points)}
    for stage, start in stages.items():
        if stage != points[0]["stage"]:
            parts.append(f'<line x1="{x(start):.1f}" x2="{x(start):.1f}" y1="4" '
                         f'y2="{HEIGHT - BOTTOM}" stroke="#999" stroke-dasharray="3 2"/>')
    for term, color in COLORS.items():
        coords = " ".join(f"{x(p[along]):.1f},{y(p[term]):.1f}" for p in points
                          if p.get(term) and p[term] > 0)
        if coords:
            parts.append(f'<polyline class="{term}" fill="none" stroke="{color}" '
                         f'stroke-width="{1.6 if term == "total" else 1}" points="{coords}"/>')
    parts.append(f'<text x="{LEFT}" y="{HEIGHT - 2}">{first}</text>'
                 f'<text x="{WIDTH - 4}" y="{HEIGHT - 2}" text-anchor="end">{last} {unit}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _summary(points: list[dict[str, Any]], along: str) -> str:
    start, end = points[0], points[-1]
    return (f"total loss {start['total']:.4g} at {along} {start[along]} -> "
            f"{end['total']:.4g} at {end[along]}")
