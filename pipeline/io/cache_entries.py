"""What this program writes in its cache, part by part, so that clearing a part deletes only
that: a cache root is often a shared folder (`--cache-dir ~/models`), and a user's own files
in it are not ours to remove."""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError
from .copy_budget import reading_now, said_limit
from .files import cache_dir, cache_url, is_our_temp
from .mirror import SHARED_CACHE
from .run_copies import delete_unused
from .storage import Location, is_url, object_sizes, remove_objects

_HEX16, _HEX64 = "[0-9a-f]{16}", "[0-9a-f]{64}"
# Each part: the name pattern of a file we write there, relative to the part's folder.
ENTRIES = {
    "models": re.compile(rf"vgg19-[a-z]+-{_HEX16}-(max|avg)-[a-z0-9_-]+\.(onnx|json|onnx\.lock)"),
    "trt": re.compile(r"TensorrtExecutionProvider_[^/]+"),  # ORT's engine and timing caches
    "targets": re.compile(rf"[0-9a-f]{{2}}/{_HEX64}\.safetensors"),
    "flows": re.compile(rf"[0-9a-f]{{2}}/{_HEX64}\.safetensors"),
    "probes": re.compile(rf"[a-z0-9]+-{_HEX16}\.json(\.lock)?"),
    "digests": re.compile(rf"([0-9a-f]{{2}}/)?{_HEX64}\.sha256"),  # or flat, as written once
    # io/fetch.py: objects' local copies, and readers' links to them (io/copy_budget.py)
    "inputs": re.compile(r"(\.pins/[0-9]+-[0-9a-f]{8}-)?[0-9a-f]{32}(\.[A-Za-z0-9]+)?"),
    "objects": re.compile(rf"[0-9a-f]{{2}}/{_HEX64}\.json"),  # io/objects.py
    "runs": re.compile(rf"{_HEX16}/.+"),  # io/mirror.py: a run folder's copy, all of it ours
}


# The parts that grow with the data a machine sees, and whose entries are marked at each use
# (files.mark_used): `clear --unused-for` empties them of what has not been used lately.
AGED = ("targets", "flows", "digests", "inputs", "objects")
DAY_S = 86400.0


def is_entry(part: str, relative: Path) -> bool:
    return bool(ENTRIES[part].fullmatch(relative.as_posix())) or is_our_temp(relative)


@dataclass(frozen=True)
class Contents:
    """A part's files: this program's and the others, each by its path in the part -> size;
    after a clear by age, `recent`: ours that were used too lately to go; after a clear of
    `runs` or `inputs`, `in_use`: the files of the copies a process is working in or
    reading."""

    ours: dict[str, int]
    others: dict[str, int]
    recent: dict[str, int] = field(default_factory=dict)
    in_use: dict[str, int] = field(default_factory=dict)


def _split(part: str, sizes: dict[str, int]) -> Contents:
    ours = {name: size for name, size in sorted(sizes.items()) if is_entry(part, Path(name))}
    return Contents(ours, {n: s for n, s in sorted(sizes.items()) if n not in ours})


def entries(root: Location, part: str) -> Contents:
    """The files under root/part (a cache folder, or a shared cache's URL)."""
    if is_url(root):
        return _split(part, object_sizes(f"{root}/{part}"))
    folder = Path(root) / part
    files = folder.rglob("*") if folder.is_dir() else ()
    return _split(part, {p.relative_to(folder).as_posix(): p.stat().st_size
                         for p in files if p.is_file()})


def clear_part(root: Location, part: str, unused_for_s: float | None = None) -> Contents:
    """Delete our entries of one part (with `unused_for_s`, those unused for that long), then
    the folders left empty; returns what was deleted, and the files not ours."""
    found = entries(root, part)
    if is_url(root):
        remove_objects(f"{root}/{part}", list(found.ours))
        return found
    folder = Path(root) / part
    if unused_for_s is not None:
        unused = _unused(folder, found.ours, time.time() - unused_for_s)
        found = Contents(unused, found.others,
                         {n: size for n, size in found.ours.items() if n not in unused})
    if part == "runs":  # whole copies, each unless a process works in it
        busy = {p.name for p in delete_unused(
            sorted({folder / name.split("/")[0] for name in found.ours}))}
        found = Contents({n: s for n, s in found.ours.items() if n.split("/")[0] not in busy},
                         found.others,
                         in_use={n: s for n, s in found.ours.items() if n.split("/")[0] in busy})
    else:
        if part == "inputs":  # a reader's link: its file, till it ends (io/copy_budget.py)
            found = Contents({n: s for n, s in found.ours.items() if not reading_now(n)},
                             found.others, found.recent,
                             {n: s for n, s in found.ours.items() if reading_now(n)})
        for name in found.ours:
            (folder / name).unlink(missing_ok=True)
    if folder.is_dir():
        for sub in sorted((p for p in folder.rglob("*") if p.is_dir()), reverse=True):
            if not any(sub.iterdir()):
                sub.rmdir()
        if not any(folder.iterdir()):
            folder.rmdir()
    return found


def _unused(folder: Path, ours: dict[str, int], before: float) -> dict[str, int]:
    """The entries last used (written, or read: files.mark_used) before `before`."""
    out = {}
    for name, size in ours.items():
        try:
            if (folder / name).stat().st_mtime < before:
                out[name] = size
        except OSError:  # gone meanwhile
            pass
    return out


CACHE_PARTS = {"models": "ONNX models",
               "trt": "TensorRT engines", "targets": "content/style targets",
               "flows": "optical flows of video frames", "probes": "measured hardware defaults",
               "digests": "input files' sha256",
               "inputs": "images fetched from object storage",
               "objects": "input objects' sha256 and size",
               "runs": "local copies of bucket run folders"}


def _parts(parts: Sequence[str], cache: str | None) -> dict[str, list[Location]]:
    """Where each part is kept: this machine's cache folder; for a cache in object storage,
    its shared parts in the bucket first, then in this machine's copy."""
    for part in parts:
        if part not in CACHE_PARTS:
            raise InputError(f"unknown cache part {part!r}; use {', '.join(CACHE_PARTS)}")
    root, url = cache_dir(cache), cache_url(cache)
    return {part: [url, root] if url and part in SHARED_CACHE else [root]
            for part in parts or CACHE_PARTS}


def cache_contents(cache: str | None = None) -> tuple[Location, dict[str, tuple[Location,
                                                                                Contents]]]:
    """The cache root (a shared cache's URL) and, per part, where it is kept and its files."""
    found = {part: (where[0], entries(where[0], part))
             for part, where in _parts((), cache).items()}
    return cache_url(cache) or cache_dir(cache), found


def inputs_limit(cache: str | None = None) -> str:
    """What this machine's copies of input objects may hold now, and why."""
    return said_limit(cache_dir(cache) / "inputs")


def clear_cache(parts: Sequence[str] = (), cache: str | None = None,
                unused_for_days: float | None = None) -> list[tuple[Location, Contents]]:
    """Empty these parts (all when none), deleting only files this program wrote, and a shared
    part of a cache in object storage in the bucket and here; returns (folder, what was
    deleted) per part and place. Everything is recomputed on demand. `unused_for_days`: only
    what this machine has not used for that long, of the AGED parts (all of them when none is
    named); a bucket keeps no time of use, so only this machine's copies."""
    if unused_for_days is not None:
        if not unused_for_days >= 0:
            raise InputError(f"--unused-for must be a number of days >= 0, got {unused_for_days}")
        idle = [p for p in parts if p not in AGED and p in CACHE_PARTS]
        if idle:
            raise InputError(f"--unused-for: {', '.join(idle)} keep no time of use; clear them "
                             f"whole, or name some of {', '.join(AGED)}")
        parts = parts or AGED
        return [(Path(where[-1]) / part, clear_part(where[-1], part, unused_for_days * DAY_S))
                for part, where in _parts(parts, cache).items()]
    return [(f"{root}/{part}" if is_url(root) else Path(root) / part, clear_part(root, part))
            for part, where in _parts(parts, cache).items() for root in where]
