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
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from ..errors import InputError
from .manifest import image_files, relative_path

ASSIGNMENTS = ("cross", "random", "cycle")
FORMATS = ("png", "jpg")


def list_images(folder: Path, recursive: bool, skipped: list[Path]) -> list[Path]:
    """The image files in `folder` (and below it, with `recursive`), sorted; entries named like
    images that are not files (folders, broken links) go to `skipped`."""
    if not folder.is_dir():
        raise InputError(f"{folder}: not a folder")
    found = image_files(folder.glob("**/*" if recursive else "*"), skipped)
    if not found:
        raise InputError(f"{folder}: no images found" + ("" if recursive else
                                                         " (--recursive looks in subfolders)"))
    return found


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


def dataset_rows(content_dir: Path, style_dir: Path, *, recursive: bool, assign: str,
                 per_image: int, seed: int, mirror: bool, fmt: str, grid: dict[str, list[Any]],
                 relative_to: Path, skipped: list[Path]) -> list[dict[str, Any]]:
    """One row per content image, style and parameter setting. With `mirror`, each output is
    the content's path relative to `content_dir` with the extension `fmt`; an image with
    several styles, or a grid of several settings, adds `__<style>` and `__<setting>` to the
    file name so that no two rows share an output."""
    if fmt not in FORMATS:
        raise InputError(f"--format must be one of {FORMATS}, got {fmt!r}")
    styles = list_images(style_dir, recursive, skipped)
    check_assignment(assign, per_image, len(styles))  # before a long walk of the contents
    contents = list_images(content_dir, recursive, skipped)
    names = [PurePosixPath(p.relative_to(content_dir).as_posix()) for p in contents]
    assigned = assign_styles([str(n) for n in names], styles, assign, per_image, seed)
    settings = [dict(zip(grid, values, strict=True))
                for values in itertools.product(*grid.values())]
    rows = []
    for content, name, its_styles in zip(contents, names, assigned, strict=True):
        for style, (k, setting) in itertools.product(its_styles, enumerate(settings)):
            row = {"content": relative_path(content, relative_to),
                   "style": relative_path(style, relative_to), **setting}
            if mirror:
                stem = name.stem + (f"__{style.stem}" if len(its_styles) > 1 else "") + (
                    f"__{k}" if len(settings) > 1 else "")
                row["output"] = str(name.with_name(f"{stem}.{fmt}"))
            rows.append(row)
    return rows
