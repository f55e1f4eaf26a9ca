"""How much local disk the copies of input objects (the cache's `inputs`) may take: a bucket
dataset may be larger than the disk, so the least recently used copies are deleted as new
ones arrive, and a deleted copy is downloaded again if a job needs it later. The limit is
$STYLE_PIPELINE_INPUTS_MAX (bytes, or with a unit: 50GB, 500MiB) where set, and never more
than leaves FREE_SHARE of the disk free. A copy being read (`pinned`: for a video, its
whole job) keeps its bytes, whatever process trims."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError

INPUTS_MAX_ENV = "STYLE_PIPELINE_INPUTS_MAX"
# Of the disk's size, what the copies never take the last of: room for outputs, checkpoints
# and the rest of the system.
FREE_SHARE = 0.10
# A trim goes below the limit by this share of it, so that the next copies do not each
# start one (a trim lists the whole part).
HEADROOM = 0.10
# Where readers keep their hard links to the copies they read (pinned).
PINS = ".pins"

_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_COPY_NAME = re.compile(r"[0-9a-f]{32}(\.[A-Za-z0-9]+)?")  # io/fetch.py's copy_name


def parse_size(text: str) -> int:
    """'50GB', '500 MiB', '2000000' -> bytes (InputError naming the setting otherwise)."""
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*", text)
    if m is None or m.group(2).lower() not in _UNITS:
        raise InputError(f"{INPUTS_MAX_ENV}={text!r}: expected a size such as 50GB, 500MiB "
                         "or a number of bytes")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def configured_max() -> int | None:
    text = os.environ.get(INPUTS_MAX_ENV, "").strip()
    return parse_size(text) if text else None


def said_limit(folder: Path) -> str:
    """What the copies in `folder` may hold now, and why (for `pipeline cache info`)."""
    total = _held(folder)
    room, cap = limit(folder, total), configured_max()
    why = (f"{INPUTS_MAX_ENV}={os.environ[INPUTS_MAX_ENV].strip()}" if cap is not None
           and cap <= room else f"to leave {FREE_SHARE:.0%} of the disk free")
    return f"{room / 1e9:,.2f} GB ({why})"


def limit(folder: Path, total: int) -> int:
    """What the part in `folder`, holding `total` bytes now, may hold."""
    disk = shutil.disk_usage(folder if folder.is_dir() else folder.parent)
    room = total + disk.free - int(FREE_SHARE * disk.total)
    cap = configured_max()
    return max(0, room if cap is None else min(cap, room))


@dataclass
class _Part:
    total: int  # bytes of the copies: as last listed, plus those this process wrote since
    coming: int = 0  # bytes of this process's downloads under way


_LOCK = threading.Lock()
_PARTS: dict[Path, _Part] = {}


@contextlib.contextmanager
def pinned(path: Path, name: str | None = None) -> Iterator[Path]:
    """The copy at `path` (named `name` when `path` is its download, not there yet) kept
    for the block, however long, whatever any process trims: a hard link of its own in
    PINS, which the block reads instead (a trim deletes the copy's name, not its bytes).
    FileNotFoundError when there is no such copy (trimmed meanwhile: fetch it again)."""
    name = name or path.name
    assert path.parent.name == "inputs" and _COPY_NAME.fullmatch(name), path  # not a user's
    folder = path.parent / PINS
    folder.mkdir(exist_ok=True)
    link = folder / f"{os.getpid()}-{secrets.token_hex(4)}-{name}"
    try:
        os.link(path, link)
    except FileNotFoundError:
        raise
    except OSError:  # a file system without hard links: the copy itself, unkept
        link = path.parent / name
    try:
        yield link
    finally:
        if link.parent.name == PINS:
            link.unlink(missing_ok=True)


def linked_copy(path: Path) -> Path:
    """The copy that `path`, a reader's link (pinned), reads; any other path: itself."""
    if path.parent.name != PINS:
        return path
    return path.parent.parent / path.name.split("-", 2)[-1]


def fetched_ahead(folder: Path, sizes: list[int | None]) -> int:
    """How many of the copies of `sizes` (bytes, in the order jobs need them) to fetch at
    once: those that fit in half of what the part may hold; the jobs fetch the others as
    they come to them, so that none fetched ahead is trimmed before it is read."""
    total = _held(folder)
    room = limit(folder, total) // 2
    for n, size in enumerate(sizes):
        room -= size or 0
        if room < 0:
            return n
    return len(sizes)


@contextlib.contextmanager
def arriving(copy: Path, size: int | None) -> Iterator[None]:
    """The block downloads `copy` (`size` bytes, where the store says): room is made for it
    first, so that the copies and the downloads under way stay within the limit together;
    then it is counted (at its size on disk), the least recently used others deleted if the
    part is over its limit."""
    folder, coming = copy.parent, size or 0
    with _LOCK:
        part = _PARTS.get(folder)
        if part is None:
            part = _PARTS[folder] = _Part(_held(folder))
        part.coming += coming
        _fit(folder, part, keep=None)
    try:
        yield
    finally:
        with _LOCK:
            part.coming -= coming
            with contextlib.suppress(OSError):  # (not there: the download failed)
                part.total += copy.stat().st_size
            _fit(folder, part, keep=copy)


def _fit(folder: Path, part: _Part, keep: Path | None) -> None:
    if part.total + part.coming > limit(folder, part.total):
        part.total = _trim(folder, keep, part.coming)


def _listing(folder: Path) -> dict[Path, tuple[float, int]]:
    """Our copies in `folder`: (time of last use, size) each; others' files and temp files
    (a download under way) are not counted or touched."""
    found = {}
    with contextlib.suppress(OSError), os.scandir(folder) as it:
        for entry in it:
            if _COPY_NAME.fullmatch(entry.name):
                with contextlib.suppress(OSError):
                    st = entry.stat()
                    found[Path(entry.path)] = (st.st_mtime, st.st_size)
    return found


def _held(folder: Path) -> int:
    return sum(size for _, size in _listing(folder).values())


def _trim(folder: Path, keep: Path | None, coming: int) -> int:
    """Delete the least recently used copies but `keep` until they and the `coming` bytes
    are HEADROOM under the limit (a pinned one's bytes stay till its reader ends), and the
    pins of readers that ended without removing them (killed); returns what the copies
    hold then."""
    _drop_dead_pins(folder / PINS)
    copies = _listing(folder)
    total = sum(size for _, size in copies.values())
    target = int(limit(folder, total) * (1 - HEADROOM)) - coming
    for path, (_, size) in sorted(copies.items(), key=lambda c: c[1][0]):
        if total <= target:
            break
        if path == keep:
            continue
        with contextlib.suppress(FileNotFoundError):  # another process's trim took it
            path.unlink()
        total -= size
    return total


def _drop_dead_pins(folder: Path) -> None:
    """The pins of this machine's processes that are gone (a cache folder is one machine's)."""
    with contextlib.suppress(OSError), os.scandir(folder) as it:
        for entry in it:
            if entry.name.split("-", 1)[0].isdigit() and not reading_now(f"{PINS}/{entry.name}"):
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)


def reading_now(name: str) -> bool:
    """Whether `name`, a file of the part, is the pin of a reader that goes on."""
    pid = name.removeprefix(f"{PINS}/").split("-", 1)[0]
    return name.startswith(f"{PINS}/") and pid.isdigit() and _alive(int(pid))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's
        pass
    return True
