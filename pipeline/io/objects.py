"""What a run's scan needs of an image in object storage, its sha256 and its displayed size,
remembered in the cache's `objects` part by the object's URL and version. A rerun, or a run
on another machine that shares the cache, then needs none of the bytes of the jobs it finds
done: a bucket dataset is not downloaded again to learn that most of it is finished, and its
local copies (`inputs`) can be cleared at any time. An object written again is a new version,
so it is read again."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable
from pathlib import Path

from .fetch import Version, concurrently, copy_of, current, local_copy
from .files import atomic_write_bytes, cache_dir, file_digest, mark_used
from .images import displayed_size
from .mirror import fetch_missing
from .storage import Location

Facts = tuple[str, tuple[int, int]]  # sha256 of the bytes, (w, h) as displayed


def image_facts(url: str, cache: str | None = None) -> Facts:
    """The image object's Facts: remembered, else from its local copy (downloaded), and
    remembered. InputError naming the URL when it cannot be read or decoded."""
    obj = current(url)
    entry = _entry(obj, cache)
    if (known := _known(entry, obj)) is not None:
        return known
    copy = copy_of(obj)  # where the workers of this machine read it (io/images.py)
    facts = file_digest(copy), displayed_size(copy, url)
    record = {"url": obj.url, "version": obj.tag, "sha256": facts[0], "size": facts[1]}
    with contextlib.suppress(OSError):  # a cache we cannot write costs a download next time
        atomic_write_bytes(entry, json.dumps(record).encode(), durable=False)
    return facts


def scan_ahead(images: Iterable[Location], videos: Iterable[Location],
               cache: str | None = None) -> dict[str, Facts]:
    """The Facts of the image objects among `images`, and the local copies of the video
    objects among `videos` (whose probe reads them), many at once."""
    concurrently(local_copy, videos)
    return concurrently(lambda url: image_facts(url, cache), images)


def _entry(obj: Version, cache: str | None) -> Path:
    """In 256 folders, as the targets are: a dataset may have millions of objects."""
    return cache_dir(cache) / "objects" / obj.identity[:2] / f"{obj.identity}.json"


def _known(entry: Path, obj: Version) -> Facts | None:
    """The entry's Facts if it is whole and of this very version (a cache in object storage:
    another machine's entry, fetched)."""
    fetch_missing(entry)
    with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
        record = json.loads(entry.read_text())
        w, h = record["size"]
        if (record["url"], record["version"]) == (obj.url, obj.tag) and \
                isinstance(record["sha256"], str) and len(record["sha256"]) == 64:
            mark_used(entry)
            return record["sha256"], (int(w), int(h))
    return None
