"""Thumbnails for the report, in report_files/thumbs/ beside it.

A thumbnail is named by its source's path, size and modification time, so a refreshed report
makes only the new ones; those no longer shown are removed (the folder is the report's own).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image

from ..errors import InputError
from ..io.files import atomic_path
from ..io.images import open_rgb

log = logging.getLogger("pipeline.report")
SIDE = 320  # px, longest side: sharp at the sheet's display size on a 2x screen


class Thumbnails:
    def __init__(self, folder: Path, side: int = SIDE):
        self.folder, self.side = folder, side
        self.made: set[Path] = set()

    def __call__(self, source: Path) -> Path | None:
        """The thumbnail of `source`, made if needed; None when it cannot be read."""
        try:
            stat = source.stat()
        except OSError:
            return None
        name = hashlib.sha256(f"{source.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|"
                              f"{self.side}".encode()).hexdigest()[:20] + ".jpg"
        dest = self.folder / name
        if not dest.is_file():
            try:
                img = open_rgb(source)
            except InputError as e:
                log.debug("no thumbnail for %s: %s", source, e)
                return None
            img.thumbnail((self.side, self.side), Image.Resampling.LANCZOS)
            with atomic_path(dest) as tmp:
                img.save(tmp, format="JPEG", quality=88)
        self.made.add(dest)
        return dest

    def make_all(self, sources: Iterable[Path]) -> None:
        """Make the thumbnails of `sources` on every core (decoding and resizing release the
        GIL): a first report of a large run has one per output."""
        with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
            list(pool.map(self, set(sources)))

    def sweep(self) -> None:
        """Remove the thumbnails this report no longer shows."""
        for path in self.folder.glob("*.jpg") if self.folder.is_dir() else []:
            if path not in self.made:
                path.unlink(missing_ok=True)
