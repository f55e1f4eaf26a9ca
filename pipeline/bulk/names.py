"""Short names for image paths that stay distinct: what output file names and report columns
call an input. A file is called by its stem; where stems clash (x/art.jpg and y/art.jpg,
gray.jpg and gray.png), by as much of its path as tells it apart."""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path

from ..io.storage import Location


def _name(path: Path, folders: int, extension: bool) -> str:
    parts = [*path.parent.parts[len(path.parent.parts) - folders:], path.stem]
    return "_".join(parts) + (f"_{path.suffix[1:]}" if extension and path.suffix else "")


def _digest(path: Path) -> str:
    return hashlib.sha256(str(path).encode()).hexdigest()[:8]


def short_names(paths: Iterable[Location]) -> dict[Location, str]:
    """Each path's short name: its stem where no other path has it, else the stem with the
    extension and then the nearest folders added until the clashing ones differ (and, if they
    never do, a digest of the whole path). A URL is named by its bucket and key."""
    given = list(dict.fromkeys(paths))
    as_paths = {p: Path(p.split("://", 1)[1]) if isinstance(p, str) else p for p in given}
    named = _short_names(list(as_paths.values()))
    return {p: named[as_paths[p]] for p in given}


def _short_names(paths: list[Path]) -> dict[Path, str]:
    paths = list(dict.fromkeys(paths))
    by_stem: dict[str, list[Path]] = defaultdict(list)
    for path in paths:
        by_stem[path.stem].append(path)
    names = {}
    for stem, group in by_stem.items():
        if len(group) == 1:
            names[group[0]] = stem
            continue
        depth = max(len(p.parent.parts) for p in group)
        for folders, extension in [(k, e) for k in range(depth + 1) for e in (False, True)]:
            tried = {p: _name(p, folders, extension) for p in group}
            if len(set(tried.values())) == len(group):
                break
        else:
            tried = {p: f"{stem}-{_digest(p)}" for p in group}
        names.update(tried)
    # A made-up name may still be another file's stem: that file keeps it.
    counts = Counter(names.values())
    return {p: n if counts[n] == 1 or n == p.stem else f"{n}-{_digest(p)}"
            for p, n in names.items()}
