"""`pipeline manifest build`'s work, for the CLI and the Python API alike: its inputs found
and its rows drafted (build.py, dataset.py), every row given an output of its own, and the
manifest written."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..errors import InputError
from ..io.files import describe_os_error
from ..io.storage import Location, check_store, location
from .build import Walk, cross_product, expand_inputs, parse_grid, to_rows
from .dataset import dataset_drafts
from .manifest import write_manifest


def build_manifest(output: Location, content: Sequence[str], style: Sequence[str],
                   content_dir: Location | None = None, style_dir: Location | None = None, *,
                   recursive: bool = False, assign: str = "cross", styles_per_image: int = 1,
                   seed: int = 0, mirror: bool = False, fmt: str = "png",
                   param: Sequence[str] = ()) -> tuple[int, Walk]:
    """`pipeline manifest build`: write `output`, one row per output image (the cross
    product of `content` x `style` specs x the `param` grid, or dataset mode under
    `content_dir`); returns the rows written and the walk (what it skipped). Inputs in object
    storage are written as URLs, local ones relative to a local manifest's folder. Each
    location is a path (str or Path) or a URL."""
    output = location(output)
    content_dir, style_dir = (None if d is None else location(d) for d in (content_dir, style_dir))
    dataset = content_dir is not None or style_dir is not None
    if dataset == bool(content or style) or (dataset and not (content_dir and style_dir)):
        raise InputError("give --content and --style, or --content-dir and --style-dir")
    idle = _idle_options(dataset, recursive=recursive, assign=assign,
                         styles_per_image=styles_per_image, seed=seed, mirror=mirror, fmt=fmt)
    if idle:
        raise InputError(idle)
    folder = isinstance(output, Path) and output.is_dir()
    if folder or not str(output).lower().endswith(".parquet"):
        raise InputError(f"-o {output}: a manifest is a Parquet file; give a file name ending "
                         "in .parquet" + (" (this is a folder)" if folder else ""))
    if isinstance(output, str):  # before the walk, which may list a large bucket
        check_store(output)
    walk = Walk()
    grid = parse_grid(param)
    if dataset:
        drafts = dataset_drafts(content_dir, style_dir, recursive=recursive, assign=assign,
                                per_image=styles_per_image, seed=seed, mirror=mirror, fmt=fmt,
                                grid=grid, walk=walk)
    else:
        drafts = cross_product([p for spec in content
                                for p in expand_inputs(spec, walk, videos=True)],
                               [p for spec in style for p in expand_inputs(spec, walk)], grid)
    rows = to_rows(drafts, relative_to=None if isinstance(output, str)
                   else output.resolve().parent)
    try:
        write_manifest(rows, output)
    except OSError as e:
        raise InputError(f"-o {output}: {describe_os_error(e, Path(output).parent)}") from None
    return len(rows), walk


def _idle_options(dataset: bool, *, recursive: bool, assign: str, styles_per_image: int,
                  seed: int, mirror: bool, fmt: str) -> str | None:
    """Why options given would change nothing here, or None: each is refused, not ignored
    (a --recursive that left the subfolders out would be found only in the manifest)."""
    if not dataset:
        given = [name for name, on in (("--recursive", recursive), ("--assign", assign != "cross"),
                                       ("--styles-per-image", styles_per_image != 1),
                                       ("--seed", seed != 0), ("--mirror", mirror),
                                       ("--format", fmt != "png")) if on]
        return (f"{', '.join(given)}: dataset mode only (--content-dir and --style-dir)"
                + ("; with --content, a pattern such as 'photos/**/*.jpg' takes the images of "
                   "subfolders" if recursive else "")) if given else None
    if fmt != "png" and not mirror:
        return "--format: only with --mirror (the mirrored outputs' extension)"
    if seed != 0 and assign != "random":
        return "--seed: only with --assign random"
    if styles_per_image != 1 and assign == "cross":
        return "--styles-per-image: only with --assign random or cycle"
    return None


__all__ = ["build_manifest"]
