"""`pipeline cache info` and `pipeline cache clear`."""

from __future__ import annotations

import typer
from rich.table import Table

from ..io.cache_entries import AGED, CACHE_PARTS, cache_contents, clear_cache, inputs_limit
from ..io.files import shown
from .app import app, reports_errors
from .options import CACHE_OPTION
from .progress import console

cache_app = typer.Typer(no_args_is_help=True, help="Show or empty the cache.")
app.add_typer(cache_app, name="cache")


@cache_app.command("info")
@reports_errors
def cache_info(cache_dir: str | None = CACHE_OPTION) -> None:
    """Files and sizes per part of the cache (files of other programs counted apart). A cache
    in object storage: its shared parts as the bucket has them, the rest as this machine's."""
    root, parts = cache_contents(cache_dir)
    shared = "://" in str(root)
    own = next(where for where, _ in parts.values() if "://" not in str(where))
    table = Table(title=f"cache {shown(root)}",
                  caption=f"this machine's copy: {shown(own)}" if shared else None)
    for col in ("part", "files", "size", "other files") + (("kept in",) if shared else ()):
        table.add_column(col, justify="right" if col not in ("part", "kept in") else "left")
    for part, (where, found) in parts.items():
        table.add_row(f"{part} ({CACHE_PARTS[part]})", str(len(found.ours)),
                      f"{sum(found.ours.values()) / 1e6:.1f} MB", str(len(found.others)),
                      *(("the bucket" if "://" in str(where) else "this machine",)
                        if shared else ()))
    limit = inputs_limit(cache_dir)
    console.print(table)
    console.print(f"inputs may hold {limit}; least recently used copies go first",
                  soft_wrap=True)


@cache_app.command("clear")
@reports_errors
def cache_clear(
    parts: list[str] = typer.Argument(None, help=f"Parts to empty: {', '.join(CACHE_PARTS)}. "
                                      "Default: all."),
    cache_dir: str | None = CACHE_OPTION,
    unused_for: float | None = typer.Option(
        None, "--unused-for", metavar="DAYS",
        help=f"Only the entries this machine has not used (written or read) for DAYS days, "
             f"of the parts that grow with the data: {', '.join(AGED)} (all four when no part "
             "is named). For a cron job on a long-lived machine. A cache in object storage: "
             "this machine's copy only.  [default: every entry]"),
) -> None:
    """Delete the files this program cached; everything is recomputed on demand. Files of
    any other name in the cache folders are left alone (and counted), and so are the copies
    of run folders in object storage that a running command works in and the input copies it
    reads. A cache in object storage: its shared parts are deleted in the bucket and in this
    machine's copy."""
    for folder, found in clear_cache(parts or [], cache_dir, unused_for):
        kept = len(found.others)
        recent = (f", {len(found.recent)} used within {unused_for:g} days kept "
                  f"({sum(found.recent.values()) / 1e6:,.1f} MB)" if unused_for is not None
                  else "")
        copies = len({name.split("/")[0] if str(folder).endswith("runs") else name
                      for name in found.in_use})  # the copies of run folders, or files
        busy = (f", {copies} in use by a running command kept "
                f"({sum(found.in_use.values()) / 1e6:,.1f} MB)" if copies else "")
        console.print(f"cleared {shown(folder)}: {len(found.ours)} file(s) removed "
                      f"({sum(found.ours.values()) / 1e6:,.1f} MB){recent}{busy}"
                      + (f", {kept} file(s) not written by style-pipeline left alone"
                         if kept else ""), soft_wrap=True)  # a line a log can grep


__all__ = ["cache_clear", "cache_info"]
