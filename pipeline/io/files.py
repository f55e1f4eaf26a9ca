"""Atomic file writes and the cache directory: every file we write goes through here."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import platformdirs

from ..errors import InputError
from .copy_budget import configured_max, linked_copy
from .mirror import UploadFailed, attach_cache, uploaded
from .storage import is_url, name, object_identity, put_file

CACHE_ENV = "STYLE_PIPELINE_CACHE"


def file_digest(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# Files this large have their digest remembered: an entry costs about 0.3 ms to write and
# 0.04 ms to read, where hashing runs at 1.5-2 GB/s (BENCHMARKS.md, "Manifests"), so a
# smaller file is hashed again sooner than its entry pays back.
REMEMBER_FROM = 512 * 1024


def remembered_digest(path: str | os.PathLike, cache: str | os.PathLike | None,
                      fetched: bool = False) -> str:
    """file_digest, remembered in the cache by the file's identity (_digest_entry): a long
    video, or a dataset of large photos, is read whole once, not at every run start. A file
    written again gets a new modification time, so a new entry. `fetched`: the copy of an
    object in storage (io/fetch.py), named by its URL and version and never rewritten, whose
    every use touches its times (its last use in the cache): known by its path and size."""
    st = os.stat(path)
    if st.st_size < REMEMBER_FROM:
        return file_digest(path)
    entry = _digest_entry(path, st, cache, fetched)
    with contextlib.suppress(OSError, UnicodeDecodeError):
        if re.fullmatch("[0-9a-f]{64}", known := entry.read_text().strip()):
            mark_used(entry)
            return known
    digest = file_digest(path)
    with contextlib.suppress(OSError):  # a cache we cannot write costs a read next time
        atomic_write_bytes(entry, digest.encode(), durable=False)  # checked when read
    return digest


def mark_used(entry: Path) -> None:
    """A cache entry read again: its modification time becomes its last use, which
    `pipeline cache clear --unused-for` goes by (many file systems keep no access times)."""
    with contextlib.suppress(OSError):
        os.utime(entry)


def forget_digest(path: str | os.PathLike, cache: str | os.PathLike | None) -> None:
    """Drop what remembered_digest knows of the file as it is now: its bytes were found to be
    others (rewritten within the clock's resolution, keeping its identity), so the next
    run reads it again."""
    with contextlib.suppress(OSError):
        _digest_entry(path, os.stat(path), cache).unlink(missing_ok=True)


def _digest_entry(path: str | os.PathLike, st: os.stat_result,
                  cache: str | os.PathLike | None, fetched: bool = False) -> Path:
    """The entry of the file's identity: its real path, device, inode, size, and modification
    and change times in ns (the change time cannot be set back, as `touch -d` sets the
    other); a fetched copy's: its real path and size (a reader's link: its copy's). In 256
    folders, as the targets are: a dataset may have millions of files."""
    identity = (f"{os.path.realpath(linked_copy(Path(path)))}\0{st.st_size}" if fetched else
                f"{os.path.realpath(path)}\0{st.st_dev}:{st.st_ino}:{st.st_size}:"
                f"{st.st_mtime_ns}:{st.st_ctime_ns}")
    name = hashlib.sha256(identity.encode()).hexdigest()
    return cache_dir(cache) / "digests" / name[:2] / f"{name}.sha256"


def _cache_root(override: str | os.PathLike | None) -> tuple[str, str]:
    """(the cache root as given, where it was given) for messages."""
    root = str(override or os.environ.get(CACHE_ENV)
               or platformdirs.user_cache_dir("style-pipeline"))
    return root, (CACHE_ENV if root == os.environ.get(CACHE_ENV) else "--cache-dir" if override
                  else "the user cache dir")


def cache_url(override: str | os.PathLike | None = None) -> str | None:
    """The cache's URL when it is in object storage; None for a local cache."""
    root, _ = _cache_root(override)
    return root.rstrip("/") if is_url(root) else None


def cache_dir(override: str | os.PathLike | None = None) -> Path:
    """Cache root: explicit override, else $STYLE_PIPELINE_CACHE, else the user cache dir. A
    URL is a cache shared by many machines: this machine works in its own copy (in the user
    cache dir), whose shared parts are uploaded as written and fetched as missed."""
    root, where = _cache_root(override)
    url = root.rstrip("/") if is_url(root) else None
    path = (Path(platformdirs.user_cache_dir("style-pipeline")) / "shared"
            / hashlib.sha256(url.encode()).hexdigest()[:16]) if url else Path(root).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        what = {FileExistsError: "is a file, not a folder",
                NotADirectoryError: "a folder above it is a file"}.get(
                    type(e), describe_os_error(e, path))
        raise InputError(f"cache {path} ({where}): {what}") from None
    if url:
        attach_cache(url, path)
    return path


def use_cache(cache: str | os.PathLike | None) -> None:
    """Make `cache` (a command's --cache-dir) the cache of this process and of those it starts
    wherever none is named: the copies of objects fetched from storage (io/fetch.py) go
    there too, not to the default cache. Checked first, so that a bad one is named as given
    (and the copies' budget, io/copy_budget.py)."""
    configured_max()
    if cache:
        cache_dir(cache)
        os.environ[CACHE_ENV] = absolute_cache(cache)


def absolute_cache(cache: str | os.PathLike) -> str:
    """A cache root as a process started elsewhere (a worker, a Ray actor) must be given it:
    a URL as it is, a path absolute."""
    return str(cache) if is_url(cache) else str(Path(cache).expanduser().absolute())


# atomic_path's temp files: ".<name>.<8 random chars>.style-pipeline-tmp<suffix>". Only a name
# of exactly this shape is ever swept, so a user's own ".notes.tmp.docx" is never touched.
TEMP_TAG = ".style-pipeline-tmp"
_TEMP_NAME = re.compile(r"\..+\.[a-z0-9_]{8}" + re.escape(TEMP_TAG) + r"(\.[A-Za-z0-9]+)?")


def is_our_temp(path: Path) -> bool:
    return bool(_TEMP_NAME.fullmatch(path.name))


def remove_stale_temps(folders: Iterable[Path]) -> int:
    """Delete the temp files that a killed process of ours left directly in `folders` (not
    below them). Only for folders no live process writes to (the caller holds their lock);
    returns how many were removed."""
    removed = 0
    for folder in dict.fromkeys(folders):
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            if is_our_temp(path) and path.is_file() and not path.is_symlink():
                path.unlink(missing_ok=True)
                removed += 1
    return removed


def _default_mode() -> int:
    """What a plain open() would create under the current umask (mkstemp makes 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def describe_os_error(e: OSError, where: str | os.PathLike) -> str:
    """One line for a failed write, naming the folder for the errors a user fixes there."""
    folder = Path(where)
    if isinstance(e, UploadFailed):  # the store's own line names the URL
        return str(e.strerror)
    if e.errno == errno.ENOSPC:
        return f"no space left on {folder} (the device is full)"
    if e.errno == errno.EDQUOT:
        return f"disk quota exceeded on {folder}"
    if e.errno == errno.EROFS:
        return f"{folder} is on a read-only file system"
    if e.errno in (errno.EACCES, errno.EPERM):
        return f"no permission to write in {folder}"
    return f"cannot write in {folder}: {e.strerror or e}"


def overwrites(output: str | Path, inputs: Iterable[str | Path]) -> bool:
    """Whether writing `output` would replace one of `inputs`: the same URL, the same path once
    links and `..` are resolved (`new/../a.png` is a.png once `new` is made for the output),
    or a hard link of one."""
    if isinstance(output, str):
        return object_identity(output) in {object_identity(p) for p in inputs
                                           if isinstance(p, str)}
    target = output.resolve()
    return any(isinstance(p, Path) and (p.resolve() == target or (
        p.exists() and output.exists() and output.samefile(p))) for p in inputs)


def check_writable_dir(folder: Path) -> None:
    """Create `folder` if needed and write and delete a probe file in it: raises OSError (or
    NotADirectoryError) before any work is done, rather than after minutes of optimizing."""
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, f"{folder} exists and is not a folder")
    folder.mkdir(parents=True, exist_ok=True)
    fd, probe = tempfile.mkstemp(prefix=".write-probe.", suffix=TEMP_TAG, dir=folder)
    try:  # a page of data: an empty file needs no space, so a full disk would pass
        os.write(fd, bytes(4096))
        os.fsync(fd)
    finally:
        os.close(fd)
        os.unlink(probe)


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike, durable: bool = True) -> Iterator[Path]:
    """Yield a temp path beside `dest`; rename it over `dest` only if the block succeeds.

    Readers never see a half-written file, and a crash leaves the old file (or none). A URL
    `dest` (storage.py): a local temp file, uploaded as one object when the block succeeds.
    Not `durable`: no fsync before the rename, for a file that is checked when read and
    made again if a crash left it empty (the fsync about doubles a small file's cost).
    """
    if is_url(dest):
        with tempfile.TemporaryDirectory(prefix="style-pipeline-put-") as folder:
            tmp = Path(folder) / f"part{Path(name(str(dest))).suffix}"
            yield tmp
            put_file(tmp, str(dest))
        return
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=TEMP_TAG + dest.suffix,
                               dir=dest.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            if durable:
                os.fsync(f.fileno())
            os.fchmod(f.fileno(), _default_mode())
        os.replace(tmp_path, dest)
    finally:
        tmp_path.unlink(missing_ok=True)
    uploaded(dest)  # a run folder in object storage (mirror.py): its copy there, whole


def atomic_write_bytes(dest: str | os.PathLike, data: bytes, durable: bool = True) -> None:
    with atomic_path(dest, durable) as tmp:
        tmp.write_bytes(data)


def shown(path: str | Path, home: bool = True) -> str:
    """A path as a person reads it: relative to the working folder when it is below it, else
    from ~ when it is below the home folder (`home`: not in a command to copy, where a quoted
    ~ is not expanded); a URL as it is."""
    if "://" in str(path):
        return str(path)
    path = Path(path)
    for base, prefix in ((Path.cwd(), ""), *([(Path.home(), "~/")] if home else [])):
        if path.is_absolute() and path.is_relative_to(base) and path != base:
            return prefix + path.relative_to(base).as_posix()
    return str(path)
