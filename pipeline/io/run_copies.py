"""This machine's copies of run folders in object storage (the cache's `runs` part, io/mirror.py)
are a cache too: the bucket has all they hold, so `pipeline cache clear runs` may delete them,
but never one that a process is working in. Each process that attaches a copy holds a shared
flock on its IN_USE file until its work there ends (a run's, a video's) or the process does
(the kernel lets go however it ends); a clear takes the exclusive lock, without waiting, and
deletes only the copies it got."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

IN_USE = ".in-use"
_HELD: dict[Path, int] = {}  # copy -> the descriptor holding its shared lock


def hold(copy: Path) -> None:
    """Mark `copy` in use for the rest of this process (made if missing)."""
    copy = copy.resolve()
    while copy not in _HELD:
        copy.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(copy / IN_USE, os.O_RDONLY | os.O_CREAT, 0o644)
        except FileNotFoundError:  # deleted by a clear between the two calls
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)  # waits only while a clear deletes this copy
        except OSError:  # a file system without flock: no clear can tell, so none deletes it
            os.close(fd)
            return
        if _same_file(fd, copy / IN_USE):
            _HELD[copy] = fd
        else:  # the copy was deleted while this process waited: hold the one made again
            os.close(fd)


def release(copy: Path) -> None:
    """This process no longer works in `copy` (a run it made has ended)."""
    if (fd := _HELD.pop(copy.resolve(), None)) is not None:
        os.close(fd)


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.fstat(fd).st_ino == path.stat().st_ino
    except FileNotFoundError:
        return False


@contextlib.contextmanager
def unused(copy: Path) -> Iterator[bool]:
    """Whether no process is working in `copy`; while the block runs, none can start to."""
    try:
        fd = os.open(copy / IN_USE, os.O_RDONLY | os.O_CREAT, 0o644)
    except FileNotFoundError:  # gone already
        yield True
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # held (or a file system without flock: it may be in use)
            yield False
            return
        yield True
    finally:
        os.close(fd)


def delete_unused(copies: Iterable[Path]) -> list[Path]:
    """Delete those of `copies` that no process works in; those kept."""
    kept = []
    for copy in copies:
        with unused(copy) as free:
            if free:
                shutil.rmtree(copy, ignore_errors=True)
            else:
                kept.append(copy)
    return kept
