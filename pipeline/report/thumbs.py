"""Thumbnails for the report, in report_files/thumbs/ beside it.

A thumbnail is named by its source's path, size and modification time (an input in object
storage: by its URL and version; a file of a run folder there: by its URL and size, the run
keeping no copy of its outputs), so a refreshed report makes only the new ones; those no
longer shown are removed. In a run folder in object storage they are kept in the bucket
alone, as the outputs are: a report finds them in its listing. Which intermediate images
are a job's own is read from their headers once and kept beside the thumbnails (KEYS), so a
later report downloads none of a bucket's to know it. Only files this module made
are ever removed (named as it names them, marked inside as its own, not links), and only in
a folder of the run's own: a report_files or thumbs that is a link elsewhere is refused.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image

from ..errors import InputError
from ..io.fetch import Version, copy_name, current, reading
from ..io.files import atomic_path, atomic_write_bytes
from ..io.images import DECODE_ERRORS, header_key, read_rgb_for
from ..io.mirror import (
    borrowed,
    drop_local,
    fetch_missing,
    remote_files,
    remote_of,
    remote_size,
    removed,
)
from ..io.storage import Location
from ..io.video import is_video, poster

log = logging.getLogger("pipeline.report")
SIDE = 320  # px, longest side: sharp at the sheet's display size on a 2x screen
NAME = re.compile(r"[0-9a-f]{20}\.jpg")
MARK = b"style-pipeline report thumbnail"  # the JPEG comment of every thumbnail made here
KEYS = "keys.json"  # the job key in each intermediate image checked, by its thumbnail's identity


def report_folder(out_dir: Path, *parts: str) -> Path:
    """out_dir/parts..., each level a real folder inside out_dir (made if missing): never a
    link, through which the report would write and delete elsewhere."""
    folder = out_dir
    for part in parts:
        folder = folder / part
        if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
            what = "a link" if folder.is_symlink() else "a file"
            raise InputError(f"{folder} is {what}: the report writes its thumbnails only in a "
                             "folder of its own; move it away and run again")
        folder.mkdir(exist_ok=True)
    return folder


class Thumbnails:
    def __init__(self, folder: Path, side: int = SIDE):
        self.folder, self.side = folder, side
        self._known: dict[Location, Path | None] = {}
        self._keys = _read_keys(folder / KEYS)  # of the images checked by an earlier report
        self._checked: dict[str, str] = {}

    def carries(self, source: Path, key: str) -> bool:
        """Whether `source`, an intermediate image beside an output, is of the job of `key`
        (an earlier job with the same output name may have left others there). The job key
        in its header is read once and kept in KEYS by what names its thumbnail, so a later
        report reads none again (from a bucket it would download each); an image fetched
        from a bucket for it has its thumbnail made at once (and is not kept here)."""
        try:
            identity = self._identity(source)
            if (found := self._keys.get(identity)) is None:
                with borrowed(source) as copy:
                    found = header_key(copy) or ""
                    if copy != source and found == key:
                        self._known[source] = self._made(identity, copy)
        except (OSError, InputError):
            return False
        self._checked[identity] = found
        return found == key

    def keep_keys(self) -> None:
        """Write KEYS with the images this report checked (those gone are dropped)."""
        if self._checked != self._keys:
            atomic_write_bytes(self.folder / KEYS, json.dumps(self._checked).encode(),
                               durable=False)

    def __call__(self, source: Location) -> Path | None:
        """The thumbnail of `source` (a video's first frame; an object in storage: of its
        local copy; a file of a run folder in storage: named by the bucket's copy), made if
        needed; None when it cannot be read. Found once per source: the page asks again for
        each thumbnail make_all made."""
        if source not in self._known:
            self._known[source] = self._thumbnail(source)
        return self._known[source]

    def _thumbnail(self, source: Location) -> Path | None:
        try:
            if isinstance(source, str):
                # an object: by its copy's name, made of its URL and version (the copy's time
                # is its last use, which every read touches); fetched only to be made
                source = current(source)
                identity = copy_name(source)
            else:
                identity = self._identity(source)
        except (OSError, InputError):
            return None
        return self._made(identity, source)

    @staticmethod
    def _identity(source: Path) -> str:
        """What names a file's thumbnail: in a bucket's run folder its URL and size, the run
        keeping no copy of it; else its path, size and modification time. OSError when gone."""
        if (size := remote_size(source)) is not None:
            return f"{remote_of(source)}|{size}"
        stat = source.stat()
        return f"{source.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"

    def _made(self, identity: str, source: Path | Version) -> Path | None:
        """The thumbnail named by `identity`, made from `source` unless it is there already
        (an output the run dropped here is fetched for it, not kept: mirror.borrowed; an
        object, into its local copy)."""
        name = hashlib.sha256(f"{identity}|{self.side}".encode()).hexdigest()[:20] + ".jpg"
        dest = self.folder / name
        if remote_size(dest):  # in a bucket's run folder: there, so not kept here too
            if dest.exists():
                drop_local([dest])
            return dest
        # Kept unless empty (a crash cut its write) or of an object whose server names no
        # version (it may hold other bytes now).
        if dest.is_file() and dest.stat().st_size and (isinstance(source, Path) or source.known):
            return dest
        try:
            with (reading(source) if isinstance(source, Version) else borrowed(source)) as path:
                img = poster(path) if is_video(path) else read_rgb_for(path, self.side)[0]
        except FileNotFoundError:  # gone since it was listed
            return None
        except InputError as e:
            log.debug("no thumbnail for %s: %s", getattr(source, "url", source), e)
            return None
        img.thumbnail((self.side, self.side), Image.Resampling.LANCZOS)
        with atomic_path(dest, durable=False) as tmp:  # made again if a crash empties it
            img.save(tmp, format="JPEG", quality=88, comment=MARK)
        drop_local([dest])  # uploaded, under a bucket's run folder
        return dest

    def make_all(self, sources: Iterable[Location],
                 advance: Callable[[int], None] = lambda n: None) -> None:
        """Make the thumbnails of `sources` on every core (decoding and resizing release the
        GIL): a first report of a large run has one per output. `advance(1)` as each is
        made or found."""
        with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
            for _ in pool.map(self, set(sources)):
                advance(1)

    def sweep(self) -> None:
        """Remove the thumbnails this report no longer shows: files of ours alone."""
        shown = set(self._known.values())
        for path in {*self.folder.iterdir(), *remote_files(self.folder)}:
            if path not in shown and NAME.fullmatch(path.name) and _ours(path):
                path.unlink(missing_ok=True)
                removed(path)  # its copy in the bucket, for a run folder there


def _read_keys(path: Path) -> dict[str, str]:
    """KEYS as an earlier report wrote it (in a bucket's run folder: fetched); empty when it
    is missing or damaged (the images' headers are read again)."""
    with contextlib.suppress(OSError, InputError, ValueError):
        fetch_missing(path)
        keys = json.loads(path.read_bytes())
        if isinstance(keys, dict) and all(isinstance(v, str) for v in keys.values()):
            return keys
    return {}


def _ours(path: Path) -> bool:
    """A plain file (not a link) that this module wrote: its JPEG comment says so (one in a
    bucket alone: read from there)."""
    if path.is_symlink() or (path.exists() and not path.is_file()):
        return False
    try:
        with borrowed(path) as copy, Image.open(copy) as img:
            return img.info.get("comment") == MARK
    except (InputError, *DECODE_ERRORS):
        return False
