"""report.html: a run in pages that open from disk (no server, no network).

Layout: a header with the run's numbers and the failed rows, each linked to its cell; a
contact sheet with a row per content image and a column per style (and per value of any
parameter that varies across the manifest), the inputs' thumbnails at its edges; each cell
links to the full output and shows its final loss, its iterations and seconds, its loss curve
(curves.py) and the intermediate images if the job saved any. A video job's cell plays its
output (its first frame as the poster) above its per-frame curves. Failed rows sit in their
cell with their one-line error. A sheet of more than PAGE_CELLS cells goes on in
report_files/pages/<n>.html, whole rows a page, each page linking the others. Thumbnails live
in report_files/thumbs/ (thumbs.py).
"""

from __future__ import annotations

import datetime
import logging
import math
import os
import re
from collections.abc import Callable, Iterable
from html import escape
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ..bulk import ledger
from ..bulk.locks import taking_turns
from ..bulk.manifest import REGION_FILES, RealPaths
from ..bulk.names import short_names
from ..bulk.run_state import RunInfo, read_run_info, run_folder
from ..io.files import atomic_write_bytes
from ..io.mirror import removed
from ..io.storage import Location
from ..io.storage import name as file_name
from ..version import __version__
from .curves import COLORS, loss_svg
from .gather import DONE, FAILED, PENDING, JobView, RunView, gather
from .thumbs import Thumbnails, report_folder

REPORT = "report.html"
log = logging.getLogger("pipeline.report")
FILES = "report_files"
PAGES = "pages"          # report_files/pages/<n>.html: the sheet's pages after the first
PAGE_NAME = re.compile(r"([0-9]+)\.html")
PAGE_CELLS = 500         # a page's cells, about 1 MB of page: it opens at once in a browser
FAILURES_LISTED = 100    # failed rows listed atop the first page; `pipeline status` has all
GENERATOR = '<meta name="generator" content="style-pipeline report">'  # marks our pages
NAV_ALL = 30             # a sheet of up to this many pages links every page from each
Column = tuple[tuple[Path, ...], tuple[tuple[str, Any], ...]]  # style files, varying params

CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222}
h1{font-size:20px;margin:0 0 12px}
h2{font-size:16px;margin:16px 0 6px}
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
table.failures td{padding:1px 12px 1px 0;vertical-align:top}
table.failures td:last-child{color:#900;overflow-wrap:anywhere}
p.pages a,p.pages b{margin:0 2px}
"""


# The page runs no script and loads nothing from the network: a file name that looks like
# markup is text (every value goes through _h), and the policy below is a second wall.
CSP = ("default-src 'none'; img-src 'self' file: data:; media-src 'self' file:; "
       "style-src 'unsafe-inline'; form-action 'none'; base-uri 'none'")


def _h(value: object) -> str:
    """The one way a value enters the page: HTML-escaped, quotes included (text or attribute)."""
    return escape(str(value), quote=True)


def write_report(out_dir: Location, page_cells: int = PAGE_CELLS,
                 advance: Callable[[int], None] = lambda n: None) -> Path:
    """Write (or refresh) <out_dir>/report.html, its further pages and its thumbnails; returns
    its path (of a run folder in object storage, a URL: in this machine's copy, each file
    uploaded). `advance(n)`: n more thumbnails made or found (a first report of a large run
    makes one per input, output and intermediate image)."""
    out_dir = out_dir if isinstance(out_dir, Path) else run_folder(out_dir)
    info = read_run_info(out_dir)  # a folder that is no run's is said so, and nothing made
    # One report at a time, each reading the run once the one before it is written: two at
    # once (a refresh by hand as the run ends) would each remove the other's new thumbnails,
    # and the one written last, maybe the older, would stand.
    with taking_turns(report_folder(out_dir, FILES), lambda: log.info(
            "report: waiting for another report of %s to finish", out_dir)):
        return _write(out_dir, info, page_cells, advance)


def _write(out_dir: Path, info: RunInfo, page_cells: int, advance: Callable[[int], None]
           ) -> Path:
    thumbs = Thumbnails(report_folder(out_dir, FILES, "thumbs"))
    view = gather(out_dir, thumbs.carries, info)
    thumbs.make_all([*(j.content for j in view.jobs), *(s for j in view.jobs for s in j.styles),
                     *(j.output for j in view.jobs if j.status == DONE and j.output),
                     *(m for j in view.jobs for m in j.masks),
                     *(path for j in view.jobs for _, path in j.intermediates)], advance)
    pages = render(view, thumbs, page_cells)
    if len(pages) > 1:
        report_folder(out_dir, FILES, PAGES)
    for number in range(len(pages), 0, -1):  # report.html last: the pages it links are there
        atomic_write_bytes(_page_path(out_dir, number), pages[number - 1].encode())
    thumbs.sweep()
    thumbs.keep_keys()
    _sweep_pages(out_dir / FILES / PAGES, len(pages))
    return _page_path(out_dir, 1)


def render(view: RunView, thumbs: Thumbnails, page_cells: int = PAGE_CELLS) -> list[str]:
    """The report's pages, report.html first: each holds whole rows of the sheet, about
    `page_cells` cells, so that a run of any size opens in a browser page by page. Each
    thumbnail `thumbs` has not made yet is made as the page shows it."""
    varying = varying_names(view.jobs)
    columns, rows, cells = contact_sheet(view.jobs, varying)
    names = short_names(rows) | short_names(s for styles, _ in columns for s in styles)
    per_page = max(1, page_cells // max(1, len(columns)))
    chunks = [rows[i:i + per_page] for i in range(0, len(rows), per_page)] or [[]]
    page_of = {content: number for number, chunk in enumerate(chunks, 1) for content in chunk}
    legend = "".join(f'<span style="color:{_h(c)}">&#9632; {_h(t)}</span>'
                     for t, c in COLORS.items())
    top = [f"<h1>style-pipeline run: {_h(view.out_dir)}</h1>", _header(view),
           *([f'<p class="note">{_h(view.note)}</p>'] if view.note else [])]
    shared = _Links(view.out_dir, thumbs)
    pages = []
    for number, chunk in enumerate(chunks, 1):
        link = shared.at(_page_path(view.out_dir, number).parent)
        nav = _nav(number, chunks, names, link, view.out_dir)
        failures = _failures(view, page_of, names, link) if number == 1 else ""
        body = [*top, failures, nav,
                f'<p class="legend">Loss curves (log scale, per job; per frame for a video): '
                f'{legend}</p>', _sheet(chunk, columns, cells, names, link, varying), nav]
        title = view.out_dir.name + (f" (page {number} of {len(chunks)})"
                                     if len(chunks) > 1 else "")
        pages.append(_document(title, "\n".join(part for part in body if part)))
    return pages


def _sheet(contents: list[Path], columns: list[Column],
           cells: dict[tuple[Path, Column], list[JobView]], names: dict[Path, str],
           link: _Links, varying: list[str]) -> str:
    """The contact sheet's rows of `contents`, under a head row of every column."""
    sheet = ['<table class="sheet"><thead><tr><th></th>']
    for styles, settings in columns:
        images = "".join(link.image(p, "input") for p in styles)
        label = _h(" + ".join(names[s] for s in styles)) + "".join(
            f"<br>{_h(k)}={_h(_text(v))}" for k, v in settings)
        sheet.append(f'<th>{images}<div class="name">{label}</div></th>')
    sheet.append("</tr></thead><tbody>")
    for content in contents:
        sheet.append(f'<tr><th>{link.image(content, "input")}'
                     f'<div class="name">{_h(names[content])}</div></th>')
        for column in columns:
            jobs = cells.get((content, column), [])
            sheet.append("<td>" + "".join(_cell(j, link, varying) for j in jobs) + "</td>")
        sheet.append("</tr>")
    sheet.append("</tbody></table>")
    return "\n".join(sheet)


def _page_path(out_dir: Path, number: int) -> Path:
    """Page `number`: report.html, then report_files/pages/<n>.html."""
    return out_dir / REPORT if number == 1 else out_dir / FILES / PAGES / f"{number}.html"


def _nav(number: int, chunks: list[list[Path]], names: dict[Path, str], link: _Links,
         out_dir: Path) -> str:
    """Links to the other pages, each titled with its first and last content image."""
    if len(chunks) == 1:
        return ""

    def to(page: int, text: str) -> str:
        chunk = chunks[page - 1]
        span = _h(names[chunk[0]] + (f" ... {names[chunk[-1]]}" if len(chunk) > 1 else ""))
        if page == number:
            return f'<b title="{span}">{text}</b>'
        return (f'<a href="{_h(link.href(_page_path(out_dir, page)))}" title="{span}">'
                f"{text}</a>")

    steps = ([to(number - 1, "&lsaquo; previous")] if number > 1 else []) + (
        [to(number + 1, "next &rsaquo;")] if number < len(chunks) else [])
    shown = dict.fromkeys(_linked_pages(number, len(chunks)))  # in order, looked up
    pages = " ".join(("… " if page > 1 and page - 1 not in shown else "") + to(page, str(page))
                     for page in shown)
    return (f'<p class="pages">page {number} of {len(chunks)} · {" · ".join(steps)} · '
            f"pages: {pages}</p>")


def _linked_pages(number: int, count: int) -> list[int]:
    """The pages a page links by number: all of a few; of many, the ends, every step-th and
    the neighbours within half a step, so that any page is two clicks away (about
    2 sqrt(count) links)."""
    if count <= NAV_ALL:
        return list(range(1, count + 1))
    step = math.isqrt(count - 1) + 1
    near = range(max(1, number - step // 2), min(count, number + step // 2) + 1)
    return sorted({1, count, *range(step, count, step), *near})


def _failures(view: RunView, page_of: dict[Path, int], names: dict[Path, str],
              link: _Links) -> str:
    """The failed rows atop the first page (`link`: its links), each linked to its cell: in a
    run of thousands of jobs they would otherwise hide among the pages."""
    failed = [job for job in view.jobs if job.status == FAILED]
    if not failed:
        return ""
    def cell(job: JobView) -> str:
        return _h(link.href(_page_path(view.out_dir, page_of[job.content]))) + f"#row-{job.row}"

    rows = "".join(f'<tr><td><a href="{cell(job)}">row {_h(job.row)}</a></td>'
                   f"<td>{_h(names[job.content])}</td>"
                   f"<td>{_h(job.error)}</td></tr>" for job in failed[:FAILURES_LISTED])
    more = (f"<p>and {len(failed) - FAILURES_LISTED:,} more: <code>pipeline status</code> "
            "lists them all</p>" if len(failed) > FAILURES_LISTED else "")
    return f'<h2>{len(failed):,} failed</h2><table class="failures">{rows}</table>{more}'


def _document(title: str, body: str) -> str:
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f"{GENERATOR}"
            f'<meta http-equiv="Content-Security-Policy" content="{_h(CSP)}">'
            f"<title>report: {_h(title)}</title><style>{CSS}</style></head>"
            f"<body>\n{body}\n</body></html>\n")


def _sweep_pages(folder: Path, count: int) -> None:
    """Remove the pages past the last (a sheet that shrank): pages this module wrote, in the
    report's folder of its own."""
    if folder.is_symlink() or not folder.is_dir():
        return
    for path in folder.iterdir():
        if ((found := PAGE_NAME.fullmatch(path.name)) and int(found[1]) > count
                and _page_of_ours(path)):
            path.unlink(missing_ok=True)
            removed(path)


def _page_of_ours(path: Path) -> bool:
    """A plain file (not a link) that this module wrote: its head names it as the generator."""
    if path.is_symlink() or not path.is_file():
        return False
    with path.open("rb") as f:
        return GENERATOR.encode() in f.read(256)


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
    """Paths as a page refers to them: relative to the page's folder, URL-quoted."""

    def __init__(self, out_dir: Path, thumbs: Thumbnails, real: RealPaths | None = None):
        self.base, self.thumbs = out_dir.resolve(), thumbs
        self.real = real or RealPaths()  # each folder resolved once: pages link many files

    def at(self, folder: Path) -> _Links:
        """The same links from a page in `folder`."""
        return _Links(folder, self.thumbs, self.real)

    def href(self, path: Location) -> str:
        if isinstance(path, str):  # an input in object storage
            return quote(path, safe=":/")
        return quote(Path(os.path.relpath(self.real(path.absolute()), self.base)).as_posix())

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
        # an object's s3:// (gs://, ...) URL opens in no browser: named in full, not linked
        opaque = isinstance(source, str) and not source.lower().startswith(("http://",
                                                                            "https://"))
        img = (f'<img class="{_h(css)}" loading="lazy" src="{_h(self.href(thumb))}" '
               f'alt="{_h(called)}" title="{_h(title or (source if opaque else called))}">')
        return img if opaque else f'<a href="{_h(self.href(source))}">{img}</a>'


def _cell(job: JobView, link: _Links, varying: list[str]) -> str:
    """A job in its cell, its row number its anchor (the failures atop the report link it)."""
    return f'<div id="row-{_h(job.row)}">{_job(job, link, varying)}</div>'


def _job(job: JobView, link: _Links, varying: list[str]) -> str:
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
    frames = f"{len(job.trace or ())} frames · " if job.video else ""
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
