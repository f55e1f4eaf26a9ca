"""Inputs in object storage as local files: each object downloaded once into the cache's
`inputs` folder, named by its URL and its version (ETag, else size and time), so an object
written again is fetched again and a run on the same machine downloads one again only
once its copy was trimmed (io/copy_budget.py: the copies stay within a limit of the disk);
one whose server names neither is fetched at each read. Each reader reads a link of its
own to the copy (`reading`), which no trim takes from it. `concurrently` asks many objects
at once on threads: a manifest's inputs arrive while the scan runs, instead of one round
trip per file."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from ..errors import InputError
from .copy_budget import arriving, pinned
from .files import atomic_path, cache_dir, mark_used
from .storage import filesystem, is_url, name, store_error

# Requests in flight at once: enough to hide a store's latency for small images.
FETCH_THREADS = 16

T = TypeVar("T")
# Where fsspec's file systems put an object's modification time: fsspec's own, s3fs, adlfs,
# and its HTTP client (the server's header).
MODIFIED = ("mtime", "LastModified", "last_modified", "Last-Modified")


@dataclass(frozen=True)
class Version:
    """An object as the store has it now: what names its copy and what it is remembered by."""

    url: str
    tag: str  # ETag, else size and modification time; "" where the store names neither
    fs: Any
    path: str
    size: int | None = None  # bytes, where the store says

    @property
    def identity(self) -> str:
        return hashlib.sha256(f"{self.url}\0{self.tag}".encode()).hexdigest()

    @property
    def known(self) -> bool:
        """Whether the store names this version. Else a copy or a digest kept from an earlier
        read may be of other bytes (a web server that sends neither ETag nor Last-Modified):
        the object is read anew each time."""
        return bool(self.tag)


def current(url: str) -> Version:
    """The object at `url` as it is now (one request; InputError naming the URL if it cannot
    be read, or is a prefix)."""
    fs, path = filesystem(url)
    try:
        info = fs.info(path)
    except Exception as e:
        raise store_error(url, e) from None
    if info.get("type") == "directory":
        raise InputError(f"{url}: is a folder (a prefix), not a file")
    return version_of(url, fs, path, info.get("ETag") or info.get("etag"), info.get("size"),
                      next((info[k] for k in MODIFIED if info.get(k)), None))


def version_of(url: str, fs: Any, path: str, etag: object, size: int | None,
               mtime: object) -> Version:
    """The version a HEAD's or a listing's answer names."""
    # A HEAD's ETag comes quoted and some listings' bare: one version, whichever was asked
    tag = str(etag or "").removeprefix("W/").strip('"')
    if not tag and mtime:
        tag = f"{size}:{mtime}"  # (HTTP's Last-Modified is to the second, as browsers go by)
    return Version(url, tag, fs, path, size)


def local_file(where: str | Path) -> Path:
    """A local file as it is; an object in storage as its local copy (local_copy)."""
    return local_copy(where) if is_url(where) else Path(where)


def local_copy(url: str, cache: str | None = None) -> Path:
    """The object at `url` as a local file (InputError naming the URL if it cannot be read);
    a later copy may trim it: a reader takes it through `reading_url`."""
    return copy_of(current(url), cache)


def reading_url(url: str) -> contextlib.AbstractContextManager[Path]:
    """`reading` of the object at `url` as it is now."""
    return reading(current(url))


def copy_of(obj: Version, cache: str | None = None) -> Path:
    """`obj`'s local copy, downloaded unless this machine has it; a later copy may trim it
    (io/copy_budget.py): a reader takes it through `reading`."""
    with reading(obj, cache):
        return copy_path(obj, cache)


@contextlib.contextmanager
def reading(obj: Version, cache: str | None = None) -> Iterator[Path]:
    """`obj`'s local copy as a file the block reads, downloaded unless this machine has it
    (of a version the store names), whose bytes no process's trim deletes before the block
    ends (copy_budget.pinned)."""
    dest = copy_path(obj, cache)
    with contextlib.ExitStack() as stack:
        path = None
        if obj.known:
            with contextlib.suppress(FileNotFoundError):  # not here (or trimmed a moment ago)
                path = stack.enter_context(pinned(dest))
                mark_used(dest)
        if path is None:
            try:
                with arriving(dest, obj.size), atomic_path(dest) as tmp:
                    obj.fs.get_file(obj.path, str(tmp))
                    path = stack.enter_context(pinned(tmp, dest.name))  # before it appears
            except Exception as e:
                raise store_error(obj.url, e) from None
        yield path


def copy_path(obj: Version, cache: str | None = None) -> Path:
    """Where `obj`'s local copy is (whether this machine has it or not)."""
    return cache_dir(cache) / "inputs" / copy_name(obj)


def copy_name(obj: Version) -> str:
    return f"{obj.identity[:32]}{Path(name(obj.url)).suffix}"


def concurrently(ask: Callable[[str], T], locations: Iterable[object]) -> dict[str, T]:
    """`ask(url)` of every URL among `locations`, many at once; the URLs it raised InputError
    or OSError for are left out: their reader gets the error again, with the row that reads
    them."""
    urls = list(dict.fromkeys(str(p) for p in locations if is_url(p)))
    if not urls:
        return {}
    answers: dict[str, T] = {}

    def one(url: str) -> None:
        with contextlib.suppress(InputError, OSError):
            answers[url] = ask(url)

    with ThreadPoolExecutor(min(FETCH_THREADS, len(urls))) as pool:
        list(pool.map(one, urls))
    return answers
