"""Inputs in object storage as local files: each object downloaded once into the cache's
`inputs` folder, named by its URL and its version (ETag, else size and time), so an object
written again is fetched again and a run on the same machine never downloads one twice.
`prefetch` downloads many at once on threads: a manifest's inputs arrive while the scan and
the first batches run, instead of one round trip per file."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..errors import InputError
from .files import atomic_path, cache_dir, mark_used
from .storage import filesystem, is_url, name, store_error

# Downloads in flight at once: enough to hide a store's latency for small images.
FETCH_THREADS = 16


def local_file(where: str | Path) -> Path:
    """A local file as it is; an object in storage as its local copy (local_copy)."""
    return local_copy(where) if is_url(where) else Path(where)


def local_copy(url: str, cache: str | None = None) -> Path:
    """The object at `url` as a local file (InputError naming the URL if it cannot be read)."""
    fs, path = filesystem(url)
    try:
        info = fs.info(path)
    except Exception as e:
        raise store_error(url, e) from None
    if info.get("type") == "directory":
        raise InputError(f"{url}: is a folder (a prefix), not a file")
    version = info.get("ETag") or info.get("etag") or f"{info.get('size')}:{info.get('mtime')}"
    digest = hashlib.sha256(f"{url}\0{version}".encode()).hexdigest()[:32]
    dest = cache_dir(cache) / "inputs" / f"{digest}{Path(name(url)).suffix}"
    if dest.is_file():
        mark_used(dest)
        return dest
    try:
        with atomic_path(dest) as tmp:
            fs.get_file(path, str(tmp))
    except Exception as e:
        raise store_error(url, e) from None
    return dest


def prefetch(locations: Iterable[object], cache: str | None = None) -> None:
    """Download every URL among `locations` (concurrently); errors wait for the reader, which
    gets them with the row that reads the object."""
    urls = list(dict.fromkeys(str(p) for p in locations if is_url(p)))
    if not urls:
        return
    with ThreadPoolExecutor(min(FETCH_THREADS, len(urls))) as pool:
        list(pool.map(lambda u: _quietly(u, cache), urls))


def _quietly(url: str, cache: str | None) -> None:
    with contextlib.suppress(InputError):
        local_copy(url, cache)
