"""`pipeline cache info` and `pipeline cache clear`."""

from __future__ import annotations

import typer
from rich.table import Table

from ..api import CACHE_PARTS, RuntimeOptions, cache_contents, clear_cache
from .app import app, reports_errors
from .options import field_option
from .progress import console, shown

cache_app = typer.Typer(no_args_is_help=True, help="Show or empty the cache.")
app.add_typer(cache_app, name="cache")
CACHE_OPTION = field_option(RuntimeOptions, "cache")


@cache_app.command("info")
@reports_errors
def cache_info(cache_dir: str | None = CACHE_OPTION) -> None:
    """Files and sizes per part of the cache (files of other programs counted apart)."""
    root, parts = cache_contents(cache_dir)
    table = Table(title=f"cache {shown(root)}")
    for col in ("part", "files", "size", "other files"):
        table.add_column(col, justify="right" if col != "part" else "left")
    for part, (ours, others) in parts.items():
        table.add_row(f"{part} ({CACHE_PARTS[part]})", str(len(ours)),
                      f"{sum(p.stat().st_size for p in ours) / 1e6:.1f} MB", str(len(others)))
    console.print(table)


@cache_app.command("clear")
@reports_errors
def cache_clear(
    parts: list[str] = typer.Argument(None, help="Parts to empty: weights, models, trt, "
                                      "targets, flows, probes. Default: all."),
    cache_dir: str | None = CACHE_OPTION,
) -> None:
    """Delete the files this program cached; everything is recomputed on demand. Files of
    any other name in the cache folders are left alone (and counted)."""
    for folder, removed, kept in clear_cache(parts or [], cache_dir):
        console.print(f"cleared {shown(folder)}: {removed} file(s) removed"
                      + (f", {kept} file(s) not written by style-pipeline left alone"
                         if kept else ""))


__all__ = ["cache_clear", "cache_info"]
