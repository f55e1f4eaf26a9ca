"""Files in object storage (s3://, gs://, any fsspec URL) where a local path would go.

An object store has no rename: an object appears whole on a single PUT, so an atomic write
to a URL is a local temp file uploaded in one `put` when it is complete (files.atomic_path).
Reads fetch the whole object. Endpoints and credentials come the ordinary fsspec ways (the
environment, e.g. FSSPEC_S3_ENDPOINT_URL, FSSPEC_S3_KEY; ~/.config/fsspec/*.json) or from
`storage_options` (`--storage-option name=value`). Every store error becomes one line naming
the URL, within seconds: timeouts and retries are bounded here, not left at the client's
defaults (S3's retry for minutes on an endpoint that does not answer).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import posixpath
import re
from pathlib import Path
from typing import Any

from ..errors import InputError, StoreUnavailable

_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
_ENDPOINT = re.compile(r'Could not connect to the endpoint URL: "?([a-z]+://[^/"]+)')
# Errors of a connection rather than of an object, by class name: the clients' own kinds
# (botocore's, aiohttp's) do not share a base with Python's.
_UNANSWERED = {"ConnectionError", "HTTPClientError", "ClientConnectionError", "TimeoutError"}
# The extra that brings each protocol's fsspec implementation.
EXTRAS = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs"}
# Web servers: inputs only.
WEB = ("http", "https")
# Bounded: a dead endpoint fails in seconds, a flaky one is retried a few times with backoff
# (by botocore alone: s3fs's own retries on top would multiply the attempts).
S3_DEFAULTS: dict[str, Any] = {
    "config_kwargs": {"connect_timeout": 5, "read_timeout": 10,
                      "retries": {"max_attempts": 3, "mode": "standard"}},
}
S3_RETRIES = 1
# A web server that accepts a connection and never answers would hold a row for aiohttp's
# five minutes per request. No total: a large video downloads as long as its bytes flow.
HTTP_TIMEOUTS_S = {"sock_connect": 10, "sock_read": 30}
# A PUT to a store that accepts it and never answers waits forever in the client (its read
# timeout covers responses to reads, not to a request whose body it sends): each upload has
# a deadline of its own, long enough for its size at UPLOAD_MIN_RATE bytes/s.
UPLOAD_BASE_S, UPLOAD_MIN_RATE = 30.0, 1e6
ENV_OPTIONS = "STYLE_PIPELINE_STORAGE_OPTIONS"  # JSON, for every protocol


# Where a file is: a local path, or a URL (kept a str: a Path would fold its //).
Location = Path | str


def is_url(path: str | os.PathLike) -> bool:
    return isinstance(path, str) and bool(_URL.match(path))


def protocol(url: str) -> str:
    return url.split("://", 1)[0].lower()


def object_identity(url: str) -> str:
    """`url` with `.`, `..` and doubled slashes folded: what a check that no output replaces
    an input compares, so that no spelling of an input slips through (a store may keep
    `a//b` apart from `a/b`; refusing it too costs a row, missing it an input)."""
    scheme, rest = url.split("://", 1)
    return f"{scheme.lower()}://{posixpath.normpath(rest)}"


def storage_options() -> dict[str, Any]:
    """The options given with --storage-option (kept in the environment, so workers the run
    starts see them too)."""
    raw = os.environ.get(ENV_OPTIONS)
    if not raw:
        return {}
    try:
        return dict(json.loads(raw))
    except (ValueError, TypeError):
        raise InputError(f"{ENV_OPTIONS} is not a JSON object: {raw[:80]!r}") from None


def set_storage_options(items: list[str] | None) -> None:
    """`name=value` pairs (values as JSON where they parse, e.g. anon=true) for this process
    and those it starts (None: none given)."""
    options = storage_options()
    for item in items or ():
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise InputError(f"--storage-option {item!r}: expected name=value")
        try:
            options[name.strip()] = json.loads(value)
        except ValueError:
            options[name.strip()] = value
    os.environ[ENV_OPTIONS] = json.dumps(options)


class _QuietAbandonedRequests(logging.Filter):
    """asyncio's "Task exception was never retrieved", with a traceback, for a request the
    client gave up when its connection went: the call that failed already says so, in one line
    (store_error)."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return error is None or not _unanswered(error)


logging.getLogger("asyncio").addFilter(_QuietAbandonedRequests())


def _unanswered(e: BaseException) -> bool:
    return any(kind.__name__ in _UNANSWERED for kind in type(e).__mro__)


@functools.lru_cache(maxsize=16)
def _filesystem(proto: str, options: str) -> Any:
    try:
        import fsspec
    except ImportError:
        raise InputError(f"{proto}:// paths need fsspec: pip install "
                         f"'style-pipeline[{EXTRAS.get(proto, 's3')}]'") from None
    kwargs = json.loads(options)
    if proto in ("s3", "s3a"):
        kwargs = {**S3_DEFAULTS, **kwargs}
    if proto in WEB:
        kwargs = _with_http_timeouts(kwargs)
    try:
        fs = fsspec.filesystem(proto, **kwargs)
    except ImportError:
        extra = EXTRAS.get(proto)
        hint = f"pip install 'style-pipeline[{extra}]'" if extra else "install its fsspec package"
        raise InputError(f"{proto}:// paths need an extra: {hint}") from None
    except ValueError as e:  # an unknown protocol
        raise InputError(f"{proto}://: {e}") from None
    if proto in ("s3", "s3a"):
        fs.retries = S3_RETRIES
    return fs


def _with_http_timeouts(kwargs: dict[str, Any]) -> dict[str, Any]:
    try:
        import aiohttp  # fsspec's http client's
    except ImportError:  # fsspec names what is missing
        return kwargs
    client = dict(kwargs.get("client_kwargs", {}))
    client.setdefault("timeout", aiohttp.ClientTimeout(total=None, **HTTP_TIMEOUTS_S))
    return {**kwargs, "client_kwargs": client}


# A forked child makes its own: a client's event loop thread does not survive a fork.
os.register_at_fork(after_in_child=_filesystem.cache_clear)


def filesystem(url: str) -> tuple[Any, str]:
    """(fsspec filesystem, the path inside it) of a URL."""
    fs = _filesystem(protocol(url), json.dumps(storage_options(), sort_keys=True))
    return fs, fs._strip_protocol(url)


def upload_deadline(fs: Any, size: int) -> dict[str, float]:
    """The keyword that bounds an upload of `size` bytes (none for a client that is not
    asynchronous: its own timeouts hold)."""
    return ({"timeout": UPLOAD_BASE_S + size / UPLOAD_MIN_RATE}
            if getattr(fs, "async_impl", False) else {})


def store_error(url: str, e: BaseException) -> InputError:
    """One line for a store's error: StoreUnavailable where the store did not answer."""
    if type(e).__name__ == "FSTimeoutError":  # fsspec's, past an upload_deadline
        return StoreUnavailable(f"{url}: the store did not answer in time (is it overloaded, "
                                "or did the network go away?)")
    if isinstance(e, FileNotFoundError):
        # fsspec's http client says FileNotFoundError for a server it could not reach too.
        # One web server down among a manifest's many is that row's failure, not an outage.
        cause = e.__cause__
        if cause is not None and _unanswered(cause):
            return InputError(f"{url}: cannot fetch it: {_first_line(cause)}")
        status = getattr(cause, "status", 404)  # and every other answer of the server
        if protocol(url) in WEB:
            return InputError(f"{url}: not found" if status == 404 else
                              f"{url}: the server answered HTTP {status} "
                              f"({getattr(cause, 'message', '')})")
        return InputError(f"{url}: no such object (or no such bucket)")
    if isinstance(e, PermissionError):
        return InputError(f"{url}: access denied: check the credentials and the bucket's "
                          "permissions")
    first = _first_line(e)
    if (endpoint := _ENDPOINT.search(first)) is not None:
        return StoreUnavailable(f"{url}: cannot reach the store at {endpoint.group(1)} (is it "
                                "running, and is the endpoint right?)")
    if _unanswered(e):
        return StoreUnavailable(f"{url}: the store did not answer: {first}")
    return InputError(f"{url}: the store failed: {first}")


def _first_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def read_bytes(url: str) -> bytes:
    fs, path = filesystem(url)
    try:
        return fs.cat_file(path)
    except Exception as e:  # every client raises its own kinds
        raise store_error(url, e) from None


def writable(url: str) -> None:
    if protocol(url) in WEB:
        raise InputError(f"{url}: a web server's URL is read, not written: give a local path "
                         "or an object store's URL (s3://...)")


def put_file(local: str | os.PathLike, url: str) -> None:
    """Upload a complete local file as one object (a single PUT: seen whole or not at all)."""
    writable(url)
    fs, path = filesystem(url)
    try:
        fs.put_file(os.fspath(local), path, **upload_deadline(fs, os.path.getsize(local)))
    except Exception as e:
        raise store_error(url, e) from None


def check_store(url: str) -> None:
    """InputError unless the store answers and the URL's bucket (its first part) is there:
    before any work, not at the write."""
    writable(url)
    fs, path = filesystem(url)
    bucket = path.split("/", 1)[0]
    try:
        found = fs.exists(bucket)
    except Exception as e:
        raise store_error(url, e) from None
    if not found:
        raise InputError(f"{url}: no such bucket {bucket!r}")


def find_objects(url: str, recursive: bool = False) -> list[str]:
    """The objects a URL names, as URLs, sorted: itself, the objects under a prefix (below it
    too, with `recursive`), or a glob pattern's matches (`**` recurses)."""
    fs, path = filesystem(url)
    try:
        if any(c in path for c in "*?["):
            found = fs.glob(path)
        elif fs.isdir(path):
            found = fs.find(path) if recursive else [
                p for p in fs.ls(path, detail=False) if not fs.isdir(p)]
        else:
            found = [path] if fs.exists(path) else []
    except Exception as e:
        raise store_error(url, e) from None
    return sorted(fs.unstrip_protocol(p) for p in found)


def object_sizes(url: str) -> dict[str, int]:
    """Every object under a prefix (its path below the prefix -> its size), listed afresh:
    another machine may have written there since this process last looked."""
    fs, root = filesystem(url)
    root = root.rstrip("/")
    try:
        fs.invalidate_cache(root)
        return {key[len(root) + 1:]: int(info.get("size") or 0)
                for key, info in fs.find(root, detail=True).items()}
    except Exception as e:
        raise store_error(url, e) from None


def remove_objects(url: str, names: list[str]) -> None:
    """Delete these objects under a prefix (paths below it, as object_sizes gives them)."""
    fs, root = filesystem(url)
    try:
        for name in names:
            fs.rm_file(f"{root.rstrip('/')}/{name}")
    except Exception as e:
        raise store_error(url, e) from None


def location(path: str | os.PathLike) -> Location:
    """A URL as it is (a Path would fold its //), anything else as a local Path, a leading ~
    expanded: the shell leaves `--out=~/x` as it is, which would make a folder named ~."""
    return str(path) if is_url(path) else Path(path).expanduser()


def parent(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[0]


def name(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[-1]
