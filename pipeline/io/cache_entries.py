"""What this program writes in its cache, part by part, so that clearing a part deletes only
that: a cache root is often a shared folder (`--cache-dir ~/models`), and a user's own files
in it are not ours to remove."""

from __future__ import annotations

import re
from pathlib import Path

from .files import is_our_temp

_HEX16, _HEX64 = "[0-9a-f]{16}", "[0-9a-f]{64}"
# Each part: the name pattern of a file we write there, relative to the part's folder.
ENTRIES = {
    "weights": re.compile(rf"vgg19-caffe-{_HEX16}\.safetensors"),
    "models": re.compile(rf"vgg19-[a-z]+-{_HEX16}-(max|avg)-[a-z0-9_-]+\.(onnx|json|onnx\.lock)"),
    "trt": re.compile(r"TensorrtExecutionProvider_[^/]+"),  # ORT's engine and timing caches
    "targets": re.compile(rf"[0-9a-f]{{2}}/{_HEX64}\.safetensors"),
    "flows": re.compile(rf"[0-9a-f]{{2}}/{_HEX64}\.safetensors"),
    "probes": re.compile(rf"[a-z0-9]+-{_HEX16}\.json(\.lock)?"),
    "digests": re.compile(rf"{_HEX64}\.sha256"),
    "inputs": re.compile(r"[0-9a-f]{32}(\.[A-Za-z0-9]+)?"),  # io/fetch.py: objects, local
}


def is_entry(part: str, relative: Path) -> bool:
    return bool(ENTRIES[part].fullmatch(relative.as_posix())) or is_our_temp(relative)


def entries(root: Path, part: str) -> tuple[list[Path], list[Path]]:
    """(ours, others): the files under root/part written by this program, and the rest."""
    folder = root / part
    files = sorted(p for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else []
    ours = [p for p in files if is_entry(part, p.relative_to(folder))]
    return ours, [p for p in files if p not in set(ours)]


def clear_part(root: Path, part: str) -> tuple[int, int]:
    """Delete our entries of one part, then the folders left empty; returns (removed, kept)."""
    ours, others = entries(root, part)
    for path in ours:
        path.unlink(missing_ok=True)
    folder = root / part
    if folder.is_dir():
        for sub in sorted((p for p in folder.rglob("*") if p.is_dir()), reverse=True):
            if not any(sub.iterdir()):
                sub.rmdir()
        if not any(folder.iterdir()):
            folder.rmdir()
    return len(ours), len(others)
