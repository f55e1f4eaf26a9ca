"""Dataset mode of `pipeline manifest build`: a manifest from folder trees, as bulk users build
them (Stylized-ImageNet: every image of a class-folder tree with a style drawn for it, the
output tree mirroring the input tree).

Assignments: `cross` pairs every content image with every style; `random` draws K distinct
styles per image from a generator seeded by the seed and the image's path relative to the
content folder, so an image keeps its styles when others are added or removed; `cycle` gives
image i (in sorted order) styles i*K .. i*K+K-1, round-robin, so every style is used as evenly
as the counts allow.
"""

from __future__ import annotations

import itertools
import random
from collections import Counter
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from ..errors import InputError
from ..io.storage import Location
from ..io.video import is_video
from .build import Draft, Walk, remote_images, settings_by_kind, tree_files
from .names import short_names

ASSIGNMENTS = ("cross", "random", "cycle")
FORMATS = ("png", "jpg")


def list_images(folder: Location, recursive: bool, walk: Walk, videos: bool = False
                ) -> list[Location]:
    """The image files (and videos, with `videos`) in `folder` (and below it, with
    `recursive`), sorted (build.tree_files; in object storage, build.remote_images); an error
    when there are none."""
    found: list[Location] = (remote_images(folder, walk, recursive, videos)
                             if isinstance(folder, str)
                             else list(tree_files(folder, recursive, walk, videos)))
    if not found:
        raise InputError(f"{folder}: no images found" + ("" if recursive else
                                                         " (--recursive looks in subfolders)"))
    return found


def _relative(path: Location, folder: Location) -> PurePosixPath:
    """`path` under `folder` (both local, or both URLs)."""
    if isinstance(path, str):
        return PurePosixPath(path[len(str(folder).rstrip("/")) + 1:])
    return PurePosixPath(path.relative_to(folder).as_posix())


def check_assignment(how: str, per_image: int, styles: int) -> None:
    if how not in ASSIGNMENTS:
        raise InputError(f"--assign must be one of {ASSIGNMENTS}, got {how!r}")
    if how != "cross" and not 1 <= per_image <= styles:
        raise InputError(f"--styles-per-image must be between 1 and the {styles} styles, "
                         f"got {per_image}")


def assign_styles(names: Sequence[str], styles: Sequence[Path], how: str, per_image: int,
                  seed: int) -> list[list[Path]]:
    """The styles of each content image, named by its path relative to the content folder."""
    check_assignment(how, per_image, len(styles))
    if how == "cross":
        return [list(styles) for _ in names]
    if how == "random":
        return [random.Random(f"{seed}:{name}").sample(list(styles), per_image)
                for name in names]
    return [[styles[(i * per_image + j) % len(styles)] for j in range(per_image)]
            for i in range(len(names))]


def dataset_drafts(content_dir: Location, style_dir: Location, *, recursive: bool, assign: str,
                   per_image: int, seed: int, mirror: bool, fmt: str,
                   grid: dict[str, list[Any]], walk: Walk) -> list[Draft]:
    """One row per content image, style and parameter setting (a video's: with the grid's
    video options). With `mirror`, each output is the content's path relative to
    `content_dir` with the extension `fmt` (`mp4` for a video; images that differ only in
    their extension, a.jpg and a.png, keep it: a.jpg.png); an image with several styles, or
    a grid of several settings, adds `__<style>` and `__<setting>` to the file name so that
    no two rows share an output."""
    if fmt not in FORMATS:
        raise InputError(f"--format must be one of {FORMATS}, got {fmt!r}")
    styles = list_images(style_dir, recursive, walk)
    check_assignment(assign, per_image, len(styles))  # before a long walk of the contents
    combos = settings_by_kind(grid)
    contents = list_images(content_dir, recursive, walk, videos=True)
    names = [_relative(p, content_dir) for p in contents]
    assigned = assign_styles([str(n) for n in names], styles, assign, per_image, seed)
    clashing = Counter(n.with_suffix("") for n in names)
    style_names = short_names(styles)
    drafts = []
    for content, name, its_styles in zip(contents, names, assigned, strict=True):
        its_combos = combos[is_video(content)]
        for style, (k, setting) in itertools.product(its_styles, enumerate(its_combos)):
            output = None
            if mirror:
                stem = (name.stem if clashing[name.with_suffix("")] == 1 else name.name) + (
                    f"__{style_names[style]}" if len(its_styles) > 1 else "") + (
                    f"__{k}" if len(its_combos) > 1 else "")
                output = str(name.with_name(f"{stem}.{'mp4' if is_video(content) else fmt}"))
            drafts.append(Draft(content, (style,), setting, output))
    return drafts
