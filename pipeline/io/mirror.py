"""A run folder in object storage: the run works in a local folder (its staging copy, in the
cache) and every file written there is uploaded to the same name under the URL as soon as it
is complete (files.atomic_path calls `uploaded`), one PUT each: an output, a ledger part or a
checkpoint appears in the bucket whole or not at all. A run starts by pulling the run's state
(run.json, the ledger, traces, checkpoints) from the bucket, so a run killed on one machine
resumes on another; outputs are not downloaded: an output the ledger records is done when
the bucket has it with the recorded size (one listing of the prefix per process).

The mapping local folder -> URL is kept in the environment, so the worker processes a run
starts upload what they write too. A worker on another machine (Ray, no shared filesystem)
works in its own local folder (`attach`), and what it needs of another's work comes from the
bucket: a checkpoint that is not here is looked for there (`fetch_missing`), and the driver
pulls the workers' ledger parts and traces at the end of the run.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import json
import os
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ..errors import InputError
from .storage import filesystem, put_file, store_error

ENV = "STYLE_PIPELINE_MIRRORS"
# What a run keeps of its own state; pulled at its start. Outputs are looked up, not pulled.
STATE = ("run.json", "ledger", "traces", ".checkpoints")
# Parts whose files only grow while a run rewrites them (rows added): one of the same size here
# is the same. run.json and checkpoints are rewritten at the same size.
GROWING = ("ledger", "traces")


def mirrors() -> dict[str, str]:
    return dict(json.loads(os.environ.get(ENV) or "{}"))


def staging_folder(url: str, cache: Path) -> Path:
    """The local folder a run into `url` works in (one per URL, kept between runs)."""
    return cache / "runs" / hashlib.sha256(url.rstrip("/").encode()).hexdigest()[:16]


class UploadFailed(OSError):
    """A file of a mirrored folder written here but not in the bucket: a failed write, as a
    full disk is (its strerror the store's one-line error)."""


def mirror(local: Path, url: str) -> None:
    """From now on (and in processes started from now on), files written under `local` are
    uploaded under `url`."""
    os.environ[ENV] = json.dumps({**mirrors(), str(local.resolve()): url.rstrip("/")})
    _LISTINGS.clear()  # a new run looks again


def _mirrored(path: Path) -> tuple[str, str] | None:
    """(the mirrored folder's URL, the path under it) of a file under one; None elsewhere."""
    resolved = path.resolve()
    for local, url in mirrors().items():
        if resolved.is_relative_to(local):
            return url, resolved.relative_to(local).as_posix()
    return None


def remote_of(path: Path) -> str | None:
    """The URL a file under a mirrored folder goes to; None elsewhere."""
    found = _mirrored(path)
    return None if found is None else f"{found[0]}/{found[1]}"


class _Background:
    """A worker's uploads and deletions, in the order they were asked, on one thread while its
    optimization goes on, and what it reports once they are done (`after_uploads`). After a
    failure nothing more is done: the worker raises it at its next check or flush, and no job
    written after it is reported done."""

    def __init__(self) -> None:
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="upload")
        self.pending: list[Future[None]] = []
        self.failed: BaseException | None = None

    def submit(self, work: Callable[[], None]) -> None:
        self.pending = [f for f in self.pending if not f.done()]
        self.pending.append(self.pool.submit(self._run, work))

    def _run(self, work: Callable[[], None]) -> None:
        if self.failed is None:
            try:
                work()
            except Exception as e:
                self.failed = e

    def check(self) -> None:
        if self.failed is not None:
            raise self.failed

    def flush(self) -> None:
        for future in self.pending:
            future.result()
        self.pending = []
        self.check()


_BACKGROUND: _Background | None = None


def upload_in_background() -> None:
    """From now on this process (a worker) uploads while it computes: `after_uploads` for
    what it reports, `flush_uploads` before it reports a batch done."""
    global _BACKGROUND
    _BACKGROUND = _BACKGROUND or _Background()


def flush_uploads() -> None:
    """Wait until what this process wrote is in the bucket; UploadFailed if some is not."""
    if _BACKGROUND is not None:
        _BACKGROUND.flush()


def check_uploads() -> None:
    """UploadFailed if an upload of this process has failed so far (no waiting)."""
    if _BACKGROUND is not None:
        _BACKGROUND.check()


def after_uploads(report: Callable[[], None]) -> None:
    """`report()` once every file written so far is in the bucket (at once where uploads are
    not in the background; never if one of them fails)."""
    _in_order(report)


def _in_order(work: Callable[[], None]) -> None:
    if _BACKGROUND is None:
        work()
    else:
        _BACKGROUND.submit(work)


def uploaded(path: Path) -> None:
    """Upload a complete file written under a mirrored folder (nothing elsewhere); raises
    UploadFailed when the store refuses it or cannot be reached (in the background: at the
    worker's next check or flush)."""
    if (found := _mirrored(path)) is not None:
        _in_order(functools.partial(_put, path, *found))


def _put(path: Path, root: str, name: str) -> None:
    try:
        size = path.stat().st_size
        put_file(path, f"{root}/{name}")
    except (InputError, OSError) as e:
        if not path.exists():  # deleted since (a checkpoint whose job ended): nothing to do
            return
        raise UploadFailed(errno.EIO, str(e)) from None
    if root in _LISTINGS:
        _LISTINGS[root][name] = size


def removed(path: Path) -> None:
    """Delete the remote copy of a file removed under a mirrored folder (after its uploads)."""
    if (found := _mirrored(path)) is not None:
        _in_order(functools.partial(_remove, *found))


def _remove(root: str, name: str) -> None:
    _LISTINGS.get(root, {}).pop(name, None)
    url = f"{root}/{name}"
    fs, key = filesystem(url)
    try:
        fs.rm_file(key)
    except FileNotFoundError:
        pass
    except Exception as e:
        raise UploadFailed(errno.EIO, str(store_error(url, e))) from None


def pull(url: str, local: Path, parts: tuple[str, ...] = STATE) -> None:
    """The run's state (`parts` of it) from the bucket into `local`: the bucket's copy wins,
    but a file of a GROWING part that is here at the same size is not fetched again."""
    fs, root = _fresh(url)
    try:
        found = {key: info for part in parts
                 for key, info in fs.find(f"{root}/{part}", detail=True).items()}
        for key, info in found.items():
            name = key[len(root) + 1:]
            dest = local / name
            if not (name.startswith(tuple(f"{part}/" for part in GROWING)) and dest.is_file()
                    and dest.stat().st_size == int(info.get("size") or -1)):
                _get(fs, key, dest)
    except InputError:
        raise
    except Exception as e:
        raise store_error(url, e) from None


def _get(fs: Any, key: str, dest: Path) -> None:
    """Download whole or not at all: a reader of `dest` never sees a part of it."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(f".{dest.name}.{os.getpid()}.pull")
    try:
        fs.get_file(key, str(part))
        os.replace(part, dest)
    finally:
        part.unlink(missing_ok=True)


def refresh(local: Path, parts: tuple[str, ...]) -> None:
    """`parts` of a mirrored folder as the bucket has them now, with what workers on other
    machines wrote there; nothing for a folder that is not mirrored."""
    if (url := mirrors().get(str(local.resolve()))) is not None:
        pull(url, local, parts)


def attach(url: str, cache: Path, parts: tuple[str, ...] = STATE) -> Path:
    """This machine's folder for the run folder at `url` (its staging folder in `cache`),
    mirrored, with `parts` of the run's state pulled from the bucket."""
    local = staging_folder(url, cache)
    local.mkdir(parents=True, exist_ok=True)
    pull(url, local, parts)
    mirror(local, url)
    return local


def fetch_missing(path: Path) -> None:
    """A file of a mirrored folder that is not here, from the bucket if it is there (written
    by a worker on another machine since the run started); nothing elsewhere."""
    if path.exists() or (url := remote_of(path)) is None:
        return
    fs, key = filesystem(url)
    try:
        _get(fs, key, path)
    except FileNotFoundError:
        pass
    except Exception as e:
        raise store_error(url, e) from None


def exists(path: Path) -> bool:
    """The file is here, or (under a mirrored folder) in the bucket: looked up afresh."""
    return path.exists() or remote_size(path, fresh=True) is not None


def _fresh(url: str) -> tuple[Any, str]:
    """The store and the prefix, its cached listings of the prefix dropped (another machine
    may have written there since)."""
    fs, root = filesystem(url)
    root = root.rstrip("/")
    fs.invalidate_cache(root)
    return fs, root


# Per run folder URL: its objects' sizes, from one listing per process, kept up to date with
# what this process uploads and deletes there.
_LISTINGS: dict[str, dict[str, int]] = {}


def _listing(url: str) -> dict[str, int]:
    if url not in _LISTINGS:
        fs, root = _fresh(url)
        try:
            _LISTINGS[url] = {key[len(root) + 1:]: int(info.get("size") or 0)
                              for key, info in fs.find(root, detail=True).items()}
        except Exception as e:
            raise store_error(url, e) from None
    return _LISTINGS[url]


def is_mirrored(path: Path) -> bool:
    return _mirrored(path) is not None


def remote_size(path: Path, fresh: bool = False) -> int | None:
    """The size of the bucket's copy of a file under a mirrored folder, from one listing per
    process (`fresh`: asked of the store now); None when it has none (or the file is not under
    one)."""
    found = _mirrored(path)
    if found is None:
        return None
    if not fresh:
        return _listing(found[0]).get(found[1])
    fs, key = filesystem(f"{found[0]}/{found[1]}")
    try:
        fs.invalidate_cache(key)
        return int(fs.info(key).get("size") or 0)
    except FileNotFoundError:
        return None
    except Exception as e:
        raise store_error(f"{found[0]}/{found[1]}", e) from None
