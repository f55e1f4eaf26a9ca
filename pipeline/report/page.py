"""report.html: a run on one page that opens from disk (no server, no network).

Layout: a header with the run's numbers; a contact sheet with a row per content image and a
column per style (and per value of any parameter that varies across the manifest), the inputs'
thumbnails at its edges; each cell links to the full output and shows its final loss, its
iterations and seconds, its loss curve (curves.py) and the intermediate images if the job
saved any. A video job's cell plays its output (its first frame as the poster) above its
per-frame curves. Failed rows sit in their cell with their one-line error. Thumbnails live in
report_files/ beside the page (thumbs.py).
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterable
from html import escape
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ..bulk import ledger
from ..bulk.manifest import REGION_FILES, RealPaths
from ..bulk.names import short_names
from ..io.files import atomic_write_bytes
from ..io.storage import Location
from ..io.storage import name as file_name
from ..version import __version__
from .curves import COLORS, loss_svg
from .gather import DONE, FAILED, PENDING, JobView, RunView, gather
from .thumbs import Thumbnails, report_folder

REPORT = "report.html"
FILES = "report_files"
Column = tuple[tuple[Path, ...], tuple[tuple[str, Any], ...]]  # style files, varying params

CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222}
h1{font-size:20px;margin:0 0 12px}
table.head td{padding:2px 14px 2px 0;vertical-align:top}
table.head td:first-child{color:#666}
.note{color:#a60}
table.sheet{border-collapse:collapse;margin-top:18px}
table.sheet th,table.sheet td{border:1px solid #ddd;padding:6px;vertical-align:top;
  text-align:left;font-weight:normal}
th .name{font-weight:600;max-width:240px;overflow-wrap:anywhere}
img.input{width:120px;display:block}
img.thumb,video.thumb{width:240px;display:block}
img.mask{width:56px;vertical-align:middle;border:1px solid #ccc;margin-left:4px}
.masks{font-size:11px;color:#555;margin-top:4px}
.strip{display:flex;gap:3px;margin-top:4px;flex-wrap:wrap;max-width:240px}
.strip img{height:40px}
.strip span{font-size:10px;color:#666;display:block}
.meta{font-size:12px;color:#444;max-width:240px}
.failed{background:#fde8e8;color:#900;padding:6px;max-width:240px;overflow-wrap:anywhere}
.pending{color:#888;padding:6px}
svg.curve{display:block;margin-top:4px;font:9px sans-serif;fill:#666}
.legend span{margin-right:12px}
"""


# The page runs no script and loads nothing from the network: a file name that looks like
# markup is text (every value goes through _h), and the policy below is a second wall.
CSP = ("default-src 'none'; img-src 'self' file: data:; media-src 'self' file:; "
       "style-src 'unsafe-inline'; form-action 'none'; base-uri 'none'")


def _h(value: object) -> str:
    """The one way a value enters the page: HTML-escaped, quotes included (text or attribute)."""
    return escape(str(value), quote=True)


def write_report(out_dir: Path) -> Path:
    """Write (or refresh) <out_dir>/report.html and its thumbnails; returns its path."""
    view = gather(out_dir)
    thumbs = Thumbnails(report_folder(out_dir, FILES, "thumbs"))
    page = render(view, thumbs)
    thumbs.sweep()
    path = out_dir / REPORT
    atomic_write_bytes(path, page.encode())
    return path


def render(view: RunView, thumbs: Thumbnails) -> str:
    varying = varying_names(view.jobs)
    columns, rows, cells = contact_sheet(view.jobs, varying)
    names = short_names(rows) | short_names(s for styles, _ in columns for s in styles)
    thumbs.make_all([*rows, *(s for styles, _ in columns for s in styles),
                     *(j.output for j in view.jobs if j.status == DONE and j.output),
                     *(m for j in view.jobs for m in j.masks),
                     *(path for j in view.jobs for _, path in j.intermediates)])
    link = _Links(view.out_dir, thumbs)
    body = [f"<h1>style-pipeline run: {_h(view.out_dir)}</h1>", _header(view)]
    if view.note:
        body.append(f'<p class="note">{_h(view.note)}</p>')
    legend = "".join(f'<span style="color:{_h(c)}">&#9632; {_h(t)}</span>'
                     for t, c in COLORS.items())
    body.append(f'<p class="legend">Loss curves (log scale, per job; per frame for a video): '
                f'{legend}</p>')
    body.append('<table class="sheet"><thead><tr><th></th>')
    for styles, settings in columns:
        images = "".join(link.image(p, "input") for p in styles)
        label = _h(" + ".join(names[s] for s in styles)) + "".join(
            f"<br>{_h(k)}={_h(_text(v))}" for k, v in settings)
        body.append(f'<th>{images}<div class="name">{label}</div></th>')
    body.append("</tr></thead><tbody>")
    for content in rows:
        body.append(f'<tr><th>{link.image(content, "input")}'
                    f'<div class="name">{_h(names[content])}</div></th>')
        for column in columns:
            jobs = cells.get((content, column), [])
            body.append("<td>" + "".join(_cell(j, link, varying) for j in jobs) + "</td>")
        body.append("</tr>")
    body.append("</tbody></table>")
    page = "\n".join(body)
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{_h(CSP)}">'
            f"<title>report: {_h(view.out_dir.name)}</title><style>{CSS}</style></head>"
            f"<body>\n{page}\n</body></html>\n")


def varying_names(jobs: Iterable[JobView]) -> list[str]:
    """The parameters that take more than one value across the jobs."""
    values: dict[str, set[str]] = {}
    for job in jobs:
        for name, value in job.params.items():
            if name in REGION_FILES:  # shown beside each output instead
                continue
            values.setdefault(name, set()).add(repr(value))
    return sorted(name for name, seen in values.items() if len(seen) > 1)


def _column(job: JobView, varying: list[str]) -> Column:
    return (job.styles, tuple((name, job.params[name]) for name in varying if name in job.params))


def contact_sheet(jobs: list[JobView], varying: list[str]
                  ) -> tuple[list[Column], list[Path], dict[tuple[Path, Column], list[JobView]]]:
    """Columns (style files and the varying parameters' values) and rows (content files) in
    manifest order, and each cell's jobs; `varying`: the parameters that make columns
    (varying_names)."""
    columns: dict[Column, None] = {}
    rows: dict[Path, None] = {}
    cells: dict[tuple[Path, Column], list[JobView]] = {}
    for job in jobs:
        column = _column(job, varying)
        columns.setdefault(column)
        rows.setdefault(job.content)
        cells.setdefault((job.content, column), []).append(job)
    return list(columns), list(rows), cells


class _Links:
    """Paths as the page refers to them: relative to the run folder, URL-quoted."""

    def __init__(self, out_dir: Path, thumbs: Thumbnails):
        self.out_dir, self.thumbs = out_dir.resolve(), thumbs
        self.real = RealPaths()  # each folder resolved once: a page links thousands of files

    def href(self, path: Location) -> str:
        if isinstance(path, str):  # an input in object storage
            return quote(path, safe=":/")
        return quote(Path(os.path.relpath(self.real(path.absolute()), self.out_dir)).as_posix())

    def video(self, source: Path, title: str) -> str:
        """The output video, playable in place, its first frame shown before it plays."""
        thumb = self.thumbs(source)
        poster = f' poster="{_h(self.href(thumb))}"' if thumb is not None else ""
        return (f'<video class="thumb" src="{_h(self.href(source))}"{poster} controls muted '
                f'loop playsinline preload="metadata" title="{_h(title)}"></video>')

    def image(self, source: Location, css: str, title: str = "") -> str:
        thumb = self.thumbs(source)
        called = file_name(source) if isinstance(source, str) else source.name
        if thumb is None:
            return f'<div class="pending">no preview of {_h(called)}</div>'
        return (f'<a href="{_h(self.href(source))}"><img class="{_h(css)}" loading="lazy" '
                f'src="{_h(self.href(thumb))}" alt="{_h(called)}" '
                f'title="{_h(title or called)}"></a>')


def _cell(job: JobView, link: _Links, varying: list[str]) -> str:
    if job.status == PENDING:
        return f'<div class="pending">row {_h(job.row)}: pending</div>'
    if job.status == FAILED:
        return (f'<div class="failed" title="{_h(job.error)}"><b>row {_h(job.row)} failed:</b> '
                f"{_h(job.error)}</div>")
    assert job.status == DONE and job.output is not None
    record = job.record
    losses = " ".join(f"{t} {record.get('loss_' + t) or 0:.3g}"
                      for t in ("total", "content", "style", "tv"))
    settings = "".join(f" · {k}={_text(job.params[k])}" for k in varying if k in job.params)
    frames = f"{len(job.trace)} frames · " if job.video else ""
    of = "" if job.video else f" of {job.params.get('iterations')}"
    title = (f"row {job.row} · {job.output.name}{settings} · {frames}loss {losses} · "
             f"{record.get('iterations')}{of} iterations · "
             f"{record.get('seconds') or 0:.1f} s · {record.get('device', '')} "
             f"{record.get('precision') or ''}")
    meta = (f"row {job.row} · {frames}loss {record.get('loss_total') or 0:.4g} · "
            f"{record.get('iterations')} it · {record.get('seconds') or 0:.1f} s")
    shown = link.video(job.output, title) if job.video else link.image(job.output, "thumb",
                                                                         title)
    parts = [shown, f'<div class="meta">{_h(meta)}</div>', loss_svg(job.trace)]
    if job.masks:
        masks = "".join(link.image(m, "mask", f"mask: {m.name}") for m in job.masks)
        parts.append(f'<div class="masks">masks {masks}</div>')
    if job.intermediates:
        strip = "".join(f"<div>{link.image(path, 'step', f'iteration {it}')}"
                        f"<span>{_h(it)}</span></div>" for it, path in job.intermediates)
        parts.append(f'<div class="strip">{strip}</div>')
    return "".join(parts)


def _header(view: RunView) -> str:
    done = view.done_records
    rows = [("manifest", view.manifest),
            ("jobs", f"{len(view.jobs)}: {view.count(DONE)} done, {view.count(FAILED)} failed, "
                     f"{view.count(PENDING)} pending")]
    if (ran := ledger.throughput(done)) is not None:
        timed, span = ran
        rows.append(("images per hour", f"{len(timed) / span * 3600:,.0f} ({len(timed)} "
                                        f"images in {span:,.0f} s)"))
    devices = sorted({r["device"] for r in done if r.get("device")})
    precisions = sorted({r["precision"] for r in done if r.get("precision")})
    rows += [("devices", ", ".join(devices) or "-"),
             ("precision", ", ".join(precisions) or "-"),
             ("written", datetime.datetime.fromtimestamp(view.generated_at).strftime(
                 "%Y-%m-%d %H:%M:%S") + f" by style-pipeline {__version__}")]
    return ('<table class="head">' + "".join(f"<tr><td>{_h(k)}</td><td>{_h(v)}</td></tr>"
                                             for k, v in rows) + "</table>")


def _text(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)
