"""A run folder in object storage: the run works in a local folder (its staging copy, in the
cache) and every file written there is uploaded to the same name under the URL as soon as it
is complete (files.atomic_path calls `uploaded`), one PUT each: an output, a ledger part or a
checkpoint appears in the bucket whole or not at all. A run starts by pulling the run's state
(run.json, the ledger, traces, checkpoints) from the bucket, so a run killed on one machine
resumes on another. Outputs are not downloaded, nor kept here once the bucket has them and
the ledger records them (`drop_local`): an output the ledger records is done when the bucket
has it with the recorded size (one listing of the prefix per process).

The mapping local folder -> URL is kept in the environment, so the worker processes a run
starts upload what they write too. A worker on another machine (Ray, no shared filesystem)
works in its own local folder (`attach`), and what it needs of another's work comes from the
bucket: a checkpoint that is not here is looked for there (`fetch_missing`), and the driver
pulls the workers' ledger parts and traces at the end of the run.

A cache in object storage (`attach_cache`) is mirrored the same way, part by part, but as a
convenience, not a record: an entry missing here is fetched at its read, and an upload or a
fetch the store refuses is said once and the work goes on with this machine's copy.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

from ..errors import InputError
from .run_copies import hold
from .storage import check_store, filesystem, object_sizes, parent, put_file, store_error

log = logging.getLogger("pipeline.storage")

ENV = "STYLE_PIPELINE_MIRRORS"
# What a run keeps of its own state; pulled at its start. Outputs are looked up, not pulled.
STATE = ("run.json", "ledger", "traces", ".checkpoints")
# Parts whose files only grow while a run rewrites them (rows added): one of the same size here
# is the same. run.json and checkpoints are rewritten at the same size.
GROWING = ("ledger", "traces")
# The parts of a cache in object storage that machines share (the rest is each machine's own:
# TensorRT engines fit one GPU, digests and fetched inputs name local files). Probes are keyed
# by the CPU model and torch's version; objects by their URL and version.
SHARED_CACHE = ("models", "targets", "flows", "probes", "objects")


def mirrors() -> dict[str, tuple[str, bool]]:
    """Local folder -> (its URL, whether its uploads are best effort: a cache's)."""
    return {local: (url, bool(best_effort)) for local, (url, best_effort)
            in json.loads(os.environ.get(ENV) or "{}").items()}


def staging_folder(url: str, cache: Path) -> Path:
    """The local folder a run into `url` works in (one per URL, kept between runs, the
    cache's `runs` part: `pipeline cache clear runs` deletes those not in use)."""
    return cache / "runs" / hashlib.sha256(url.rstrip("/").encode()).hexdigest()[:16]


class UploadFailed(OSError):
    """A file of a mirrored folder written here but not in the bucket: a failed write, as a
    full disk is (its strerror the store's one-line error)."""


# The mirrors are one variable of the environment, rewritten whole: threads take turns.
_REGISTERING = threading.RLock()


def mirror(local: Path, url: str, best_effort: bool = False) -> None:
    """From now on (and in processes started from now on), files written under `local` are
    uploaded under `url`."""
    with _REGISTERING:
        os.environ[ENV] = json.dumps({**mirrors(), str(local.resolve()): (url.rstrip("/"),
                                                                           best_effort)})
    _LISTINGS.clear()  # a new run looks again


class _Place(NamedTuple):
    root: str          # the mirrored folder's URL
    name: str          # the file's path under it
    best_effort: bool  # a cache's: a store that refuses is said once, and the work goes on

    @property
    def url(self) -> str:
        return self.root if self.name == "." else f"{self.root}/{self.name}"  # ".": the root

    @property
    def prefix(self) -> str:
        """How the keys of the files in this folder begin, below the root."""
        return "" if self.name == "." else f"{self.name}/"


def _mirrored(path: Path) -> _Place | None:
    resolved = path.resolve()
    for local, (url, best_effort) in mirrors().items():
        if resolved.is_relative_to(local):
            return _Place(url, resolved.relative_to(local).as_posix(), best_effort)
    return None


def remote_of(path: Path) -> str | None:
    """The URL a file under a mirrored folder goes to; None elsewhere."""
    found = _mirrored(path)
    return None if found is None else found.url


def attach_cache(url: str, local: Path) -> None:
    """Mirror the SHARED_CACHE parts of `local` (this machine's copy of the cache at `url`) to
    the bucket, once per process tree; InputError if the store does not answer. The scan's
    threads come here at once: none goes on before every part is mirrored (one that did
    neither fetched nor uploaded its entries)."""
    url = url.rstrip("/")
    with _REGISTERING:
        if str((local / SHARED_CACHE[-1]).resolve()) in mirrors():
            return
        check_store(url)
        for part in SHARED_CACHE:
            mirror(local / part, f"{url}/{part}", best_effort=True)


# The shared caches a store refused this process: not asked again (each ask could wait for
# its deadline), this machine's copy serves.
_SAID: set[str] = set()


def _given_up(place: _Place) -> bool:
    return place.best_effort and parent(place.root) in _SAID


def _go_on_without(place: _Place, what: str, e: BaseException) -> None:
    """A best-effort store's refusal: said once per cache and process, then not asked again."""
    _SAID.add(parent(place.root))
    log.warning("shared cache: cannot %s %s (%s); going on with this machine's copy "
                "without it", what, place.url, e)


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
        _in_order(functools.partial(_put, path, found))


def _put(path: Path, place: _Place) -> None:
    if _given_up(place):
        return
    try:
        size = path.stat().st_size
        put_file(path, place.url)
    except (InputError, OSError) as e:
        if not path.exists():  # deleted since (a checkpoint whose job ended): nothing to do
            return
        if place.best_effort:
            return _go_on_without(place, "upload", e)
        raise UploadFailed(errno.EIO, str(e)) from None
    if place.root in _LISTINGS:
        _LISTINGS[place.root][place.name] = size


def drop_local(paths: Iterable[Path]) -> None:
    """Once every upload asked so far is done (outputs, then the ledger rows that record them),
    delete these files' copies here, under a mirrored run folder: the bucket has them, and a
    bulk run's outputs kept here too would fill this machine's disk. After a failed upload
    they stay (written here, not there: a rerun does them again)."""
    here = [p for p in paths if (place := _mirrored(p)) is not None and not place.best_effort]
    if here:
        _in_order(functools.partial(_unlink, here))


def _unlink(paths: list[Path]) -> None:
    for path in paths:
        with contextlib.suppress(OSError):  # one left here (a folder of frames) is harmless
            path.unlink(missing_ok=True)


@contextlib.contextmanager
def borrowed(path: Path) -> Iterator[Path]:
    """A file of a mirrored folder to read once: its copy here, else the bucket's in a
    temporary folder, deleted after (an output dropped here is not fetched back to stay).
    FileNotFoundError when neither has it."""
    if path.exists() or (place := _mirrored(path)) is None:
        yield path
        return
    fs, key = filesystem(place.url)
    with tempfile.TemporaryDirectory(prefix="style-pipeline-") as folder:
        copy = Path(folder) / path.name
        try:
            fs.get_file(key, str(copy))
        except FileNotFoundError:
            raise
        except Exception as e:
            raise store_error(place.url, e) from None
        yield copy


def removed(path: Path) -> None:
    """Delete the remote copy of a file removed under a mirrored folder (after its uploads)."""
    if (found := _mirrored(path)) is not None:
        _in_order(functools.partial(_remove, found.root, found.name))


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


def remove_tree(folder: Path) -> None:
    """Delete a folder here and, under a mirrored folder, its files' copies in the bucket
    (after their uploads): a video's frames once the video is whole."""
    if folder.is_dir():
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                removed(path)
    shutil.rmtree(folder, ignore_errors=True)


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
    if (found := mirrors().get(str(local.resolve()))) is not None:
        pull(found[0], local, parts)
        _LISTINGS.pop(found[0], None)  # outputs written since: looked up again


def attach(url: str, cache: Path, parts: tuple[str, ...] = STATE) -> Path:
    """This machine's folder for the run folder at `url` (its staging folder in `cache`, in
    use by this process from now on: run_copies.py), mirrored, with `parts` of the run's state
    pulled from the bucket."""
    local = staging_folder(url, cache)
    hold(local)
    pull(url, local, parts)
    mirror(local, url)
    return local


def fetch_missing(path: Path) -> None:
    """A file of a mirrored folder that is not here, from the bucket if it is there (written
    by a worker on another machine since the run started, or a shared cache's entry); nothing
    elsewhere."""
    if path.exists() or (place := _mirrored(path)) is None or _given_up(place):
        return
    fs, key = filesystem(place.url)
    try:
        _get(fs, key, path)
    except FileNotFoundError:
        pass
    except Exception as e:
        if not place.best_effort:
            raise store_error(place.url, e) from None
        _go_on_without(place, "fetch", store_error(place.url, e))


def fetch_new(folder: Path) -> None:
    """The files the bucket has under a mirrored `folder` and this machine does not, fetched:
    what workers on other machines wrote there since (a video's frames, the passes of its
    clip that other workers kept); nothing for a folder that is not mirrored."""
    if (place := _mirrored(folder)) is None:
        return
    fs, root = _fresh(place.url)
    try:
        for key in fs.find(root):
            if not (dest := folder / key[len(root) + 1:]).exists():
                _get(fs, key, dest)
    except Exception as e:
        raise store_error(place.url, e) from None


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
        _LISTINGS[url] = object_sizes(url)
    return _LISTINGS[url]


def remote_files(folder: Path) -> list[Path]:
    """The files the bucket has directly in a mirrored `folder`, from the process's listing
    (kept up to date with its own uploads and deletes); none for a folder not mirrored."""
    if (place := _mirrored(folder)) is None:
        return []
    prefix = place.prefix
    return [folder / key[len(prefix):] for key in _listing(place.root)
            if key.startswith(prefix) and "/" not in key[len(prefix):]]


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
        return _listing(found.root).get(found.name)
    fs, key = filesystem(found.url)
    try:
        fs.invalidate_cache(key)
        return int(fs.info(key).get("size") or 0)
    except FileNotFoundError:
        return None
    except Exception as e:
        raise store_error(found.url, e) from None
