"""What this program writes in its cache, part by part, so that clearing a part deletes only
that: a cache root is often a shared folder (`--cache-dir ~/models`), and a user's own files
in it are not ours to remove."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from .files import is_our_temp
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
    "inputs": re.compile(r"[0-9a-f]{32}(\.[A-Za-z0-9]+)?"),  # io/fetch.py: objects, local
}


def is_entry(part: str, relative: Path) -> bool:
    return bool(ENTRIES[part].fullmatch(relative.as_posix())) or is_our_temp(relative)


@dataclass(frozen=True)
class Contents:
    """A part's files: this program's and the others, each by its path in the part -> size."""

    ours: dict[str, int]
    others: dict[str, int]


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


def clear_part(root: Location, part: str) -> Contents:
    """Delete our entries of one part, then the folders left empty; returns what there was."""
    found = entries(root, part)
    if is_url(root):
        remove_objects(f"{root}/{part}", list(found.ours))
        return found
    folder = Path(root) / part
    for name in found.ours:
        (folder / name).unlink(missing_ok=True)
    if folder.is_dir():
        for sub in sorted((p for p in folder.rglob("*") if p.is_dir()), reverse=True):
            if not any(sub.iterdir()):
                sub.rmdir()
        if not any(folder.iterdir()):
            folder.rmdir()
    return found
