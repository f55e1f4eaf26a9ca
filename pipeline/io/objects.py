"""What a run's scan needs of an image in object storage, its sha256 and its displayed size,
remembered in the cache's `objects` part by the object's URL and version. A rerun, or a run
on another machine that shares the cache, then needs none of the bytes of the jobs it finds
done: a bucket dataset is not downloaded again to learn that most of it is finished, and its
local copies (`inputs`) can be cleared at any time. An object written again is a new version,
so it is read again; one whose server names no version is read at each run."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .copy_budget import fetched_ahead
from .fetch import Version, concurrently, copy_of, copy_path, current, local_copy, reading
from .files import atomic_write_bytes, cache_dir, file_digest, mark_used
from .images import displayed_size
from .mirror import fetch_missing
from .storage import Location


@dataclass(frozen=True)
class ImageObject:
    version: Version  # as the store had it when asked: its copy's name
    digest: str  # sha256 of its bytes
    size: tuple[int, int]  # (w, h) as displayed


def image_object(url: str, cache: str | None = None, fresh: bool = False,
                 version: Version | None = None) -> ImageObject:
    """What is remembered of the image object, else read from its local copy (downloaded)
    and remembered; `fresh`: read and remembered again, over what was (found to be wrong);
    `version`: as a listing just named it (io/listing.py), else asked. InputError naming the
    URL when it cannot be read or decoded."""
    obj = version or current(url)
    entry = _entry(obj, cache)
    if not fresh and obj.known and (remembered := _known(entry, obj)) is not None:
        return remembered
    with reading(obj, cache) as copy:  # where the workers of this machine read it
        found = ImageObject(obj, file_digest(copy), displayed_size(copy, url))
    if not obj.known:  # another read may find other bytes
        return found
    record = {"url": obj.url, "version": obj.tag, "sha256": found.digest, "size": found.size}
    with contextlib.suppress(OSError):  # a cache we cannot write costs a download next time
        atomic_write_bytes(entry, json.dumps(record).encode(), durable=False)
    return found


def scan_ahead(images: Iterable[Location], videos: Iterable[Location],
               cache: str | None = None, listed: dict[str, Version] | None = None
               ) -> dict[str, ImageObject]:
    """The image objects among `images`, and the local copies of the video objects among
    `videos` (whose probe reads them), many at once; `listed`: versions already known."""
    known = listed or {}
    concurrently(local_copy, videos)
    return concurrently(lambda url: image_object(url, cache, version=known.get(url)), images)


def copied(url: str, known: Version | None = None) -> Version:
    """The object at `url` (of version `known`, else as it is now), with a local copy where
    the store names its version (else its reader fetches it anew: `reading`)."""
    obj = known or current(url)
    if obj.known:
        copy_of(obj)
    return obj


def fetch_copies(objects: Iterable[ImageObject]) -> None:
    """The local copies of `objects` this machine lacks, many at once: the inputs of the
    jobs a run has left to do, where they arrive on threads instead of one at a time in
    the workers (the others' copies are not needed); the first of them, as many as fit in
    half the copies' limit (io/copy_budget.py), the workers fetching the rest."""
    missing = [obj.version for obj in {obj.version.url: obj for obj in objects}.values()
               if not copy_path(obj.version).is_file()]
    if not missing:
        return
    folder = copy_path(missing[0]).parent
    by_url = {v.url: v for v in missing[:fetched_ahead(folder, [v.size for v in missing])]}
    concurrently(lambda url: copy_of(by_url[url]), by_url)


def forget(objects: Iterable[ImageObject], cache: str | None = None) -> None:
    """Drop this machine's entries of `objects`, so that the next scan reads them again (or
    takes a shared cache's, which the worker that found one wrong wrote again)."""
    for obj in objects:
        _entry(obj.version, cache).unlink(missing_ok=True)


def _entry(obj: Version, cache: str | None) -> Path:
    """In 256 folders, as the targets are: a dataset may have millions of objects."""
    return cache_dir(cache) / "objects" / obj.identity[:2] / f"{obj.identity}.json"


def _known(entry: Path, obj: Version) -> ImageObject | None:
    """What the entry says if it is whole and of this very version (a cache in object
    storage: another machine's entry, fetched)."""
    fetch_missing(entry)
    with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
        record = json.loads(entry.read_text())
        w, h = record["size"]
        if (record["url"], record["version"]) == (obj.url, obj.tag) and \
                isinstance(record["sha256"], str) and len(record["sha256"]) == 64:
            mark_used(entry)
            return ImageObject(obj, record["sha256"], (int(w), int(h)))
    return None
