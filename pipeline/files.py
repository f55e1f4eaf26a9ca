"""Atomic file writes and the cache directory: every file we write goes through here."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import platformdirs

CACHE_ENV = "STYLE_PIPELINE_CACHE"


def file_digest(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def cache_dir(override: str | os.PathLike | None = None) -> Path:
    """Cache root: explicit override, else $STYLE_PIPELINE_CACHE, else the user cache dir."""
    root = override or os.environ.get(CACHE_ENV) or platformdirs.user_cache_dir("style-pipeline")
    path = Path(root).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


# atomic_path's temp files: ".<name>.<random>.tmp<suffix>".
TEMP_GLOB = ".*.tmp*"


def remove_stale_temps(folder: Path) -> int:
    """Delete temp files that a killed process left under `folder`. Only for a folder no live
    process writes to (the caller holds its lock); returns how many were removed."""
    stale = [p for p in folder.rglob(TEMP_GLOB) if p.is_file()]
    for path in stale:
        path.unlink(missing_ok=True)
    return len(stale)


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside `dest`; rename it over `dest` only if the block succeeds.

    Readers never see a half-written file, and a crash leaves the old file (or none).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp" + dest.suffix,
                               dir=dest.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, dest)
    finally:
        tmp_path.unlink(missing_ok=True)


def atomic_write_bytes(dest: str | os.PathLike, data: bytes) -> None:
    with atomic_path(dest) as tmp:
        tmp.write_bytes(data)
