"""One run per run folder: on this machine a lock on the folder, and for a run folder in object
storage a lease in the bucket, which runs on other machines see. Reports of a run folder are
written one after the other (a lock on their folder, waited for).

An object store has no lock, so the lease is an object (`.run-lease`: the run's id, host,
process and when it last renewed it) that a run claims at its start and renews while it runs.
A free lease is claimed with a conditional create (S3's If-None-Match, which AWS honours; a
store that ignores the condition just writes), then read back after a moment: of two runs that
start at once, the one whose claim was overwritten sees the other's and stops. A lease its run
stopped renewing (the run was killed) is free once it is EXPIRES_S old, or at once on the
machine that ran it, whose process is gone.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..io.storage import filesystem, store_error, upload_deadline

LEASE = ".run-lease"
EXPIRES_S = float(os.environ.get("STYLE_PIPELINE_LEASE_EXPIRES_S") or 90)  # tests shorten it
READ_BACK_S = 1.0


# The kernel's tables (Linux): the locks held (who holds a folder's lock, without taking it),
# and the mounts (whether a lock elsewhere could hold it unseen).
PROC_LOCKS, PROC_MOUNTS = Path("/proc/locks"), Path("/proc/mounts")
# File systems that other machines mount too: their locks are not in this machine's table.
SHARED_FILE_SYSTEMS = {"nfs", "nfs4", "cifs", "smb3", "smbfs", "lustre", "gpfs", "beegfs",
                       "ceph", "glusterfs", "9p", "afs", "ocfs2", "gfs2", "pvfs2"}


class RunLocked(RuntimeError):
    """Another run uses this run folder (exit code 4)."""


@dataclass(frozen=True)
class Holder:
    """The run that uses a run folder now."""

    pid: int
    host: str


def holder(out: str | Path) -> Holder | None:
    """The run using the run folder `out` now (a path: the process holding its folder_lock;
    a URL: the live lease's), found without taking either: a run starting at that moment
    would find it taken and refuse. OSError where this machine cannot tell: no /proc/locks,
    or the folder is on a file system other machines mount, where a run there holds a lock
    this machine does not see."""
    if isinstance(out, str):
        where = f"{out.rstrip('/')}/{LEASE}"
        fs, key = filesystem(where)
        held = _read(fs, key, where)
        if held is None or _run_over(held):
            return None
        return Holder(int(held.get("pid", 0)), str(held.get("host", "")))
    st = os.stat(out)
    folder = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    for line in PROC_LOCKS.read_text().splitlines():
        # "1: FLOCK  ADVISORY  WRITE 6069 fe:00:2580863 0 EOF"; a waiter's line has "->".
        # On NFS a flock is kept as a POSIX lock of the whole file.
        fields = line.split()
        if len(fields) > 5 and fields[1] in ("FLOCK", "POSIX") and fields[5] == folder:
            return Holder(int(fields[4]), socket.gethostname())
    kind = file_system_type(out)
    if kind in SHARED_FILE_SYSTEMS or kind.startswith("fuse"):
        raise OSError(f"{out} is on {kind}, which other machines may mount")
    return None


def file_system_type(path: Path) -> str:
    """The type of the file system `path` is on, from the mount it is deepest under."""
    real, found, depth = os.path.realpath(path), "", -1
    for line in PROC_MOUNTS.read_text().splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[1])
        inside = real == point or real.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= depth:  # the last of equal mounts is the one in use
            found, depth = fields[2], len(point)
    return found


@contextmanager
def _flocked(folder: Path, taken: Callable[[int], None]) -> Iterator[None]:
    """An exclusive flock on the folder itself: released by the kernel when this process ends,
    however it ends, and not defeated by deleting a file. `taken(fd)` where another holds it:
    raises, or waits for it."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            taken(fd)
        yield
    finally:
        os.close(fd)


def folder_lock(out_dir: Path) -> contextlib.AbstractContextManager[None]:
    """The run's: a second run on the folder is refused."""

    def refuse(fd: int) -> None:
        raise RunLocked(f"another `pipeline run` is using {out_dir}; wait for it to finish, "
                        "or use another --out folder")

    return _flocked(out_dir, refuse)


def taking_turns(folder: Path, waiting: Callable[[], None]
                 ) -> contextlib.AbstractContextManager[None]:
    """Writers of `folder` one after the other: each waits for the one before it to finish,
    `waiting()` said first."""

    def wait(fd: int) -> None:
        waiting()
        fcntl.flock(fd, fcntl.LOCK_EX)

    return _flocked(folder, wait)


@contextmanager
def bucket_lease(url: str | None, run_id: str) -> Iterator[None]:
    """The run folder at `url` leased to this run while the block runs (nothing for None)."""
    if url is None:
        yield
        return
    where = f"{url.rstrip('/')}/{LEASE}"
    fs, key = filesystem(where)
    held = _read(fs, key, where)
    if held is not None and held["run_id"] != run_id:
        _refuse_if_alive(held, url)
    mine = {"run_id": run_id, "host": socket.gethostname(), "pid": os.getpid()}
    _write(fs, key, where, mine, create=held is None)
    time.sleep(READ_BACK_S)
    now = _read(fs, key, where)
    if now is None or now["run_id"] != run_id:
        raise RunLocked(f"another `pipeline run` claimed {url} at the same moment; wait for it "
                        "to finish, or use another --out")
    stop = threading.Event()
    renewer = threading.Thread(target=_renew, args=(fs, key, where, mine, stop), daemon=True,
                               name="lease")
    renewer.start()
    try:
        yield
    finally:
        stop.set()
        renewer.join()
        with contextlib.suppress(Exception):  # a lease left behind expires on its own
            fs.rm_file(key)


def _run_over(held: dict[str, Any]) -> bool:
    """Whether a lease's run is over: its lease expired, or it ran on this machine and its
    process is gone (killed, or stopped by a store that went away)."""
    if held.get("host") == socket.gethostname() and not _alive(held.get("pid")):
        return True
    return time.time() - float(held.get("renewed_at", 0)) >= EXPIRES_S


def _refuse_if_alive(held: dict[str, Any], url: str) -> None:
    """RunLocked unless the lease's run is over (_run_over)."""
    if not _run_over(held):
        age = time.time() - float(held.get("renewed_at", 0))
        raise RunLocked(f"another `pipeline run` (on {held.get('host')}, process "
                        f"{held.get('pid')}) is using {url}: it renewed its lease {age:.0f} s "
                        f"ago. Wait for it to finish; if it was killed, its lease expires in "
                        f"{EXPIRES_S - age:.0f} s")


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _renew(fs: Any, key: str, where: str, mine: dict[str, Any], stop: threading.Event) -> None:
    while not stop.wait(EXPIRES_S / 6):
        with contextlib.suppress(Exception):  # the store is away: the run meets that itself
            _write(fs, key, where, mine, create=False)


def _read(fs: Any, key: str, where: str) -> dict[str, Any] | None:
    try:
        fs.invalidate_cache(key)
        return dict(json.loads(fs.cat_file(key)))
    except FileNotFoundError:
        return None
    except (ValueError, TypeError):
        return {"run_id": "", "renewed_at": 0}  # not ours to read: a free lease
    except Exception as e:
        raise store_error(where, e) from None


def _write(fs: Any, key: str, where: str, mine: dict[str, Any], create: bool) -> None:
    data = json.dumps({**mine, "renewed_at": time.time()}).encode()
    deadline = upload_deadline(fs, len(data))
    try:
        try:
            fs.pipe_file(key, data, mode="create" if create else "overwrite", **deadline)
        except TypeError:  # a filesystem with no conditional write: a plain one
            fs.pipe_file(key, data, **deadline)
    except FileExistsError:
        held = _read(fs, key, where)  # claimed since we looked
        if held is not None:
            _refuse_if_alive(held, where.rsplit("/", 1)[0])
        fs.pipe_file(key, data, **deadline)
    except Exception as e:
        raise store_error(where, e) from None
