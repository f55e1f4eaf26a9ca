"""`pipeline manifest build` and `pipeline manifest validate`."""

from __future__ import annotations

import typer

from ..bulk.make_manifest import build_manifest
from ..bulk.manifest import parse_overrides
from ..bulk.scan import scan
from ..io.files import use_cache
from ..io.storage import check_store, is_url, location, set_storage_options
from .app import app, counting, print_errors, reports_errors
from .options import CACHE_OPTION, STORAGE_OPTION
from .progress import console, say
from .run import SET_OPTION

manifest_app = typer.Typer(no_args_is_help=True, help="Build and check Parquet manifests.")
app.add_typer(manifest_app, name="manifest")


@manifest_app.command("build")
@reports_errors
def manifest_build(
    output: str = typer.Option(..., "--output", "-o", help="Manifest to write (.parquet): a "
                               "path, or a URL in object storage."),
    content: list[str] = typer.Option(None, help="Content images and videos: a folder, a glob "
                                      "pattern or a file (repeatable). Every content x every "
                                      "style; a video makes a video row."),
    style: list[str] = typer.Option(None, help="Style images: a folder, a glob pattern or a file "
                                    "(repeatable)."),
    content_dir: str | None = typer.Option(None, help="Dataset mode: the content images and "
                                            "videos under this folder, with --style-dir and "
                                            "--assign."),
    style_dir: str | None = typer.Option(None, help="Dataset mode: the style images in this "
                                          "folder."),
    recursive: bool = typer.Option(False, help="Dataset mode: also the images in subfolders "
                                   "(class folders), linked ones included; a run's output "
                                   "folder (it holds a run.json) is left out, with a warning."),
    assign: str = typer.Option("cross", help="Dataset mode: cross (every content with every "
                               "style), random (--styles-per-image styles drawn per image, "
                               "reproducible from --seed and the image's path) or cycle "
                               "(round-robin in sorted order)."),
    styles_per_image: int = typer.Option(1, help="Dataset mode, random and cycle: styles per "
                                         "content image (one row each)."),
    seed: int = typer.Option(0, help="Dataset mode, random: the draw's seed."),
    mirror: bool = typer.Option(False, help="Dataset mode: each output path mirrors the "
                                "content's path under --content-dir (class folders kept), with "
                                "the extension --format; several styles or settings per image "
                                "add __<style> and __<setting number> to the name, and images "
                                "that differ only in extension keep it (a.jpg.png)."),
    fmt: str = typer.Option("png", "--format", help="Dataset mode with --mirror: png or jpg."),
    param: list[str] = typer.Option(None, "--param", help="Parameter grid axis name=v1,v2 "
                                    "(repeatable), e.g. --param style_weight=50,200; list "
                                    "parameters separate values with ';'. A video option "
                                    "(--param temporal_weight=0,1000) multiplies the video "
                                    "rows only."),
    storage_option: list[str] = STORAGE_OPTION,
) -> None:
    """Write a manifest, one row per output: the cross product of --content x --style x the
    parameter grid, or (dataset mode) the images under --content-dir each with styles from
    --style-dir as --assign says. Paths are stored relative to the manifest's folder."""
    set_storage_options(storage_option)
    rows, walk = build_manifest(location(output), content or [], style or [],
                                None if content_dir is None else location(content_dir),
                                None if style_dir is None else location(style_dir),
                                recursive=recursive, assign=assign,
                                styles_per_image=styles_per_image, seed=seed, mirror=mirror,
                                fmt=fmt, param=param or [])
    for what, paths in (("entries that are not image files (folders, broken links)",
                         walk.skipped),
                        ("run folders (a run.json marks them: their outputs are not inputs)",
                         walk.run_folders),
                        ("hidden image files and folders (names starting with '.')",
                         walk.hidden)):
        if paths:
            say("warning:", "yellow", f"skipped {len(paths)} {what}: "
                f"{', '.join(str(p) for p in paths[:10])}" + (" ..." if len(paths) > 10 else ""))
    console.print(f"wrote {output}: {rows} rows", soft_wrap=True)


@manifest_app.command("validate")
@reports_errors
def manifest_validate(
    manifest: str = typer.Argument(..., help="Manifest (.parquet): a path, or a URL in object "
                                   "storage."),
    out: str = typer.Option("out", "--out", help="Output folder the run would use, a path or "
                            "a URL in object storage (relative `output` cells resolve against "
                            "it)."),
    set_: list[str] = SET_OPTION,
    storage_option: list[str] = STORAGE_OPTION,
    cache: str | None = CACHE_OPTION,
) -> None:
    """Check every row: columns, types, ranges, files exist and decode, duplicate outputs.
    Exit code 2 when any row is invalid."""
    set_storage_options(storage_option)
    use_cache(cache)  # input files' digests and objects, remembered for the run
    if is_url(out):
        check_store(out)  # as the run would, before its rows
    with counting() as advance:
        found = scan(location(manifest), location(out), parse_overrides(set_ or []), advance)
    if found.errors:
        print_errors(found.errors, limit=None)  # its whole job: every one listed
    if not found.jobs and not found.errors:
        say("warning:", "yellow", f"{manifest} has no rows")
    console.print(f"{manifest}: {len(found.jobs)} valid, {len(found.errors)} invalid row(s)",
                  soft_wrap=True)
    if found.errors:
        raise typer.Exit(2)


__all__ = ["manifest_build", "manifest_validate"]
