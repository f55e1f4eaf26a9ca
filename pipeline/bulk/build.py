"""`pipeline manifest build`: the input images found (files, folders, glob patterns, folder
trees), the rows drafted (a cross product here, dataset assignments in dataset.py), and every
row given an output of its own.

Walking a tree follows linked folders (each real folder once, so a link loop ends) and leaves
out a run's own output folder (a run.json marks it): a run kept inside the dataset must not
have its outputs and thumbnails picked up as content. Two rows never share an output: where
the default names (content and style stems) or mirrored names (a.jpg and a.png) would clash,
the clashing rows get names that tell them apart (names.py), and a clash that remains is an
error listing the rows.
"""

from __future__ import annotations

import glob
import itertools
import os
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError, did_you_mean
from ..gatys.params import StyleParams
from ..gatys.region_params import Regions
from ..io.images import IMAGE_SUFFIXES
from ..io.storage import Location, find_objects, is_url
from ..io.storage import name as file_name
from ..io.video import VIDEO_SUFFIXES, is_video
from ..video.params import VideoParams
from .again import set_items
from .manifest import (
    LIST_COLUMNS,
    PARAM_COLUMNS,
    REGION_COLUMNS,
    REGION_FILES,
    RESERVED,
    VIDEO_COLUMNS,
    coerce_param,
    default_output,
    params_tag,
)
from .names import short_names
from .run_state import RUN_INFO, is_run_folder


@dataclass
class Walk:
    """What finding the images left out, for the user to hear about."""

    skipped: list[Path] = field(default_factory=list)      # named like images, not files
    run_folders: list[Location] = field(default_factory=list)  # runs' output folders
    hidden: list[Path] = field(default_factory=list)       # .name: image files, folders


@dataclass(frozen=True)
class Draft:
    """A manifest row being built: `output` is None for the default name."""

    content: Path
    styles: tuple[Path, ...]
    setting: tuple[tuple[str, Any], ...] = ()
    output: str | None = None


def _suffixes(videos: bool) -> frozenset[str]:
    """The file name suffixes of inputs: images, and videos with `videos`."""
    return IMAGE_SUFFIXES | VIDEO_SUFFIXES if videos else IMAGE_SUFFIXES


def image_files(candidates: Iterable[Path], walk: Walk, any_extension: bool = False,
                videos: bool = False) -> list[Path]:
    """The candidates named like images (or videos, with `videos`; any name, with
    `any_extension`: files named one by one) that are files, sorted; the others named so
    (folders, broken links) go to `walk.skipped`, and hidden ones (a name starting with '.',
    as macOS's ._photo.jpg beside photo.jpg) to `walk.hidden`, unless named one by one."""
    kinds = _suffixes(videos)
    named = sorted(p for p in candidates if any_extension or p.suffix.lower() in kinds)
    if not any_extension:
        walk.hidden += [p for p in named if p.name.startswith(".")]
        named = [p for p in named if not p.name.startswith(".")]
    walk.skipped += [p for p in named if not p.is_file()]
    return [p for p in named if p.is_file()]


def tree_files(folder: Path, recursive: bool, walk: Walk, videos: bool = False) -> list[Path]:
    """The image files (and videos, with `videos`) in `folder` (and below it, with
    `recursive`, through linked folders too), sorted. Run folders below `folder` are left
    out (and added to `walk.run_folders`); if `folder` is a run folder itself, its outputs are
    content but its own folders are not."""
    if not folder.is_dir():
        raise InputError(f"{folder}: not a folder")
    if not recursive:
        return image_files(folder.iterdir(), walk, videos=videos)
    candidates: list[Path] = []
    seen: set[str] = set()
    for root, dirs, files in os.walk(folder, followlinks=True):
        here = Path(root)
        real = os.path.realpath(here)
        if real in seen:  # a link back up the tree, or a second link to one folder
            dirs[:] = []
            continue
        seen.add(real)
        keep = []
        for name in sorted(dirs):
            if name.startswith("."):
                walk.hidden.append(here / name)
            elif is_run_folder(here / name):
                walk.run_folders.append(here / name)
            elif not (here == folder and name in RESERVED and is_run_folder(folder)):
                keep.append(name)
        dirs[:] = keep
        candidates += [here / name for name in files]
    return image_files(candidates, walk, videos=videos)


def expand_inputs(spec: str, walk: Walk, videos: bool = False) -> list[Location]:
    """A file, a folder (its image files, and videos with `videos`) or a glob pattern (`**`
    recurses), sorted; in object storage (a URL), the images (and videos) under a prefix or
    matching a pattern."""
    path = Path(os.path.expanduser(spec))
    if is_url(spec):
        found: list[Location] = list(remote_images(spec, walk, videos=videos))
    elif path.is_dir():
        found = tree_files(path, False, walk, videos)
    else:
        matches = _once(Path(p) for p in glob.glob(os.path.expanduser(spec), recursive=True))
        found = image_files(_outside_runs(matches, _literal_prefix(path), walk), walk,
                            any_extension=True)
    if not found:
        raise InputError(f"{spec}: no images found")
    return found


def _once(paths: Iterable[Path]) -> list[Path]:
    """Each real file once, by its shortest path: `**` follows linked folders, loops too."""
    first: dict[str, Path] = {}
    for path in sorted(paths, key=lambda p: (len(p.parts), p)):
        first.setdefault(os.path.realpath(path), path)
    return list(first.values())


def _literal_prefix(pattern: Path) -> Path:
    """The folders of a glob pattern before its first wildcard."""
    parts = list(itertools.takewhile(lambda p: not glob.has_magic(p), pattern.parts))
    return Path(*parts) if parts else Path(".")


def _outside_runs(paths: list[Path], root: Path, walk: Walk) -> list[Path]:
    """`paths` less those inside a run folder below `root` (each run folder said once, whatever
    links lead to it)."""
    runs: dict[Path, bool] = {}
    said: set[str] = set()
    kept = []
    for path in paths:
        inside = [f for f in path.parents if f.is_relative_to(root) and f != root]
        for folder in inside:
            if folder not in runs:
                runs[folder] = is_run_folder(folder)
                if runs[folder] and (real := os.path.realpath(folder)) not in said:
                    said.add(real)
                    walk.run_folders.append(folder)
        if not any(runs[f] for f in inside):
            kept.append(path)
    return kept


def parse_grid(items: Sequence[str]) -> dict[str, list[Any]]:
    """`--param name=v1,v2` (list parameters take ';' between values) to typed value lists;
    a region's files (--param masks=sky.png) as absolute paths."""
    grid: dict[str, list[Any]] = {}
    for item in items:
        name, sep, values = item.partition("=")
        name = name.strip().replace("-", "_")
        params = {*PARAM_COLUMNS, *REGION_COLUMNS, *VIDEO_COLUMNS} - {"style_blend"}
        if not sep and name in params:
            raise InputError(f"--param {item!r}: no values; give {name}=v1,v2")
        if not sep or name not in params:
            raise InputError(f"--param {item!r}{did_you_mean(name, params)}: expected "
                             f"name=v1,v2 with name a parameter")
        split = values.split(";") if name in LIST_COLUMNS else values.split(",")
        try:
            grid[name] = [coerce_param(name, v) for v in split if v.strip()]
        except ValueError as e:
            raise InputError(f"--param {item!r}: {e}") from None
        if not grid[name]:
            raise InputError(f"--param {item!r}: no values; give {name}=v1,v2")
        if name in REGION_FILES:
            grid[name] = [_absolute(v) for v in grid[name]]
    return grid


def _absolute(value: Any) -> Any:
    """A path, or a tuple of paths, made absolute against the working folder."""
    if isinstance(value, tuple):
        return tuple(str(Path(v).absolute()) for v in value)
    return str(Path(value).absolute())


def split_setting(setting: Iterable[tuple[str, Any]]
                  ) -> tuple[StyleParams, Regions, VideoParams]:
    """A grid point's job parameters, regions and video options."""
    values = dict(setting)
    regions = {k: values.pop(k) for k in REGION_COLUMNS if k in values}
    video = {k: values.pop(k) for k in VIDEO_COLUMNS if k in values}
    return StyleParams(**values), Regions(**regions), VideoParams(**video)


def settings(grid: dict[str, list[Any]], video: bool = True
             ) -> list[tuple[tuple[str, Any], ...]]:
    """Every combination of the grid's values, each checked as a one-style job's parameters
    would be; for an image (not `video`), of the values that are not video options: an image
    is made once, whatever the video options."""
    axes = {k: v for k, v in grid.items() if video or k not in VIDEO_COLUMNS}
    combos = [tuple(zip(axes, values, strict=True))
              for values in itertools.product(*axes.values())]
    for combo in combos:
        try:
            params, regions, options = split_setting(combo)
            regions.validate(1, params.validate())
            options.validate()
        except InputError as e:  # named by the combination: a rule may join two axes
            raise InputError(f"--param {' '.join(set_items(dict(combo)))}: {e}") from None
    return combos


def settings_by_kind(grid: dict[str, list[Any]]
                     ) -> dict[bool, list[tuple[tuple[str, Any], ...]]]:
    """The grid's settings of an image (False) and of a video (True, with its video options)."""
    return {video: settings(grid, video) for video in (False, True)}


def cross_product(contents: Sequence[Path], styles: Sequence[Path],
                  grid: dict[str, list[Any]]) -> list[Draft]:
    """contents x styles x parameter grid (its video options for videos only), one row each."""
    combos = settings_by_kind(grid)
    return [Draft(content, (style,), setting) for content in contents for style in styles
            for setting in combos[is_video(content)]]


def remote_images(url: str, walk: Walk, recursive: bool = False, videos: bool = False
                  ) -> list[str]:
    """The images (and videos, with `videos`) in object storage under a prefix or matching a
    pattern, as in a folder: hidden names left out, and run folders below the prefix too (to
    `walk.run_folders`); the prefix a run folder itself, its outputs but not its own
    folders."""
    kinds = _suffixes(videos)
    found = find_objects(url, recursive)
    root = _literal_root(url)
    runs = _remote_runs(found, root, pattern=root != url.rstrip("/"))
    below = runs - {root}
    walk.run_folders += sorted(below)
    own = tuple(f"{root}/{name}/" for name in RESERVED) if root in runs else ()
    return [u for u in found
            if Path(file_name(u)).suffix.lower() in kinds and not file_name(u).startswith(".")
            and not u.startswith(own) and not any(f in below for f in _folders(u, root))]


def _literal_root(url: str) -> str:
    """The prefix a URL's listing or pattern starts from: itself, or the folders before its
    first wildcard."""
    parts = url.rstrip("/").split("/")
    return "/".join(itertools.takewhile(lambda p: not glob.has_magic(p), parts))


def _folders(url: str, root: str) -> list[str]:
    """The folders of `url` below `root` (root itself not among them)."""
    parts = url[len(root) + 1:].split("/")[:-1]
    return [f"{root}/{'/'.join(parts[:i])}" for i in range(1, len(parts) + 1)]


def _remote_runs(found: list[str], root: str, pattern: bool) -> set[str]:
    """The run folders (a run.json marks them) among `root` and the folders of `found` below
    it: a listing holds their run.json; a pattern's matches do not, so each folder is asked."""
    listed = {u[: -len(RUN_INFO) - 1] for u in found if file_name(u) == RUN_INFO}
    if not pattern:
        return listed
    folders = {f for u in found for f in _folders(u, root)} | {root}
    return listed | {f for f in folders - listed if find_objects(f"{f}/{RUN_INFO}")}


def relative_path(path: Location, relative_to: Path | None) -> str:
    """A manifest cell: `path` relative to the manifest's folder (absolute without one; a URL
    as it is)."""
    if isinstance(path, str):
        return path
    if relative_to is None:
        return str(path.resolve())
    return os.path.relpath(path.resolve(), relative_to.resolve())


def to_rows(drafts: Sequence[Draft], relative_to: Path | None = None) -> list[dict[str, Any]]:
    """The manifest's rows, no two with the same output: a row whose default name (its
    stems and its parameters' hash) clashes with another's is given a name from the parts of
    its paths that differ; InputError lists the rows that still clash."""
    tags = {}
    for s, video in {(d.setting, is_video(d.content)) for d in drafts}:
        params, regions, options = split_setting(s)
        tags[s, video] = params_tag(params, options if video else None, regions)
    outputs = [d.output or default_output(d.content, d.styles, tags[d.setting, is_video(d.content)])
               for d in drafts]
    named = [d.output is not None for d in drafts]
    by_output = _rows_by_output(outputs)
    if len(by_output) < len(outputs):
        names = short_names(p for d in drafts for p in (d.content, *d.styles))
        for i, d in enumerate(drafts):
            if d.output is None and len(by_output[outputs[i]]) > 1:
                tag = tags[d.setting, is_video(d.content)]
                outputs[i], named[i] = default_output(d.content, d.styles, tag, names), True
        by_output = _rows_by_output(outputs)
    clashes = [(out, rows) for out, rows in by_output.items() if len(rows) > 1]
    if clashes:
        listed = "; ".join(f"{out} (rows {', '.join(map(str, rows[:5]))})"
                           for out, rows in clashes[:10])
        raise InputError(f"{len(clashes)} output name(s) would be shared by several rows: "
                         f"{listed}{' ...' if len(clashes) > 10 else ''}")
    return [{"content": relative_path(d.content, relative_to),
             "style": relative_path(d.styles[0], relative_to) if len(d.styles) == 1
             else [relative_path(s, relative_to) for s in d.styles],
             **{k: _cell(k, v, relative_to) for k, v in d.setting},
             **({"output": out if own else None} if any(named) else {})}
            for d, out, own in zip(drafts, outputs, named, strict=True)]


def _cell(name: str, value: Any, relative_to: Path | None) -> Any:
    """A grid value as a manifest cell: tuples as lists, a region's files as relative_path."""
    if name in REGION_FILES:
        paths = value if isinstance(value, tuple) else (value,)
        cells = [relative_path(Path(p), relative_to) for p in paths]
        return cells if isinstance(value, tuple) else cells[0]
    return list(value) if isinstance(value, tuple) else value


def _rows_by_output(outputs: Sequence[str]) -> dict[str, list[int]]:
    rows: dict[str, list[int]] = defaultdict(list)
    for i, out in enumerate(outputs):
        rows[out].append(i)
    return rows


def build_rows(contents: Sequence[Path], styles: Sequence[Path], grid: dict[str, list[Any]],
               relative_to: Path | None = None) -> list[dict[str, Any]]:
    """The rows of contents x styles x parameter grid, each with an output of its own."""
    return to_rows(cross_product(contents, styles, grid), relative_to)
