"""Inputs on a web server (http:// and https:// URLs, read through fsspec), against a real
server on 127.0.0.1: they are read like local files, a manifest there reads its rows beside
it, and a URL that cannot be read is that row's one-line error, within seconds, not a hang.
Web servers are never written to."""

from __future__ import annotations

import functools
import socket
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.io import storage
from pipeline.io.images import read_metadata
from tests.conftest import make_painting, make_photo
from tests.run_helpers import cell, run_cli
from tests.s3_server import free_port

pytest.importorskip("aiohttp", reason="fsspec's http client: pip install -e '.[s3]'")
runner = CliRunner()
FAST = ["--size", "40", "--iterations", "4", "--device", "cpu", "--precision", "fp32", "-q"]


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass

    def send_header(self, keyword: str, value: str) -> None:
        if not (keyword == "Last-Modified" and self.path.startswith("/unversioned/")):
            super().send_header(keyword, value)  # (a server that names no version of these)

    def send_head(self):  # what a private file of a web server answers
        if self.path.startswith("/private/"):
            self.send_error(403, "Forbidden")
            return None
        return super().send_head()


@pytest.fixture
def web(tmp_path) -> Iterator[tuple[str, Path]]:
    """(URL, folder): a web server over a folder holding a photo and a painting."""
    folder = tmp_path / "site"
    folder.mkdir()
    make_photo((64, 48)).save(folder / "photo.png")
    make_painting().save(folder / "painting.png")
    server = ThreadingHTTPServer(("127.0.0.1", 0),
                                 functools.partial(_Quiet, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    storage._filesystem.cache_clear()
    yield f"http://127.0.0.1:{server.server_address[1]}", folder
    server.shutdown()
    server.server_close()
    storage._filesystem.cache_clear()


def _one_line_error(args: list[str], message: str) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert message in result.output and len(result.output.strip().splitlines()) == 1, \
        result.output


def test_images_on_a_web_server_are_read_like_local_files(web, tmp_path):
    url, folder = web
    made = {}
    for where, base in (("web", url), ("local", str(folder))):
        made[where] = tmp_path / f"{where}.png"
        result = runner.invoke(app, ["stylize", f"{base}/photo.png", f"{base}/painting.png",
                                     "-o", str(made[where]), *FAST])
        assert result.exit_code == 0, result.output
    assert read_metadata(made["web"])["job_key"] == read_metadata(made["local"])["job_key"]
    assert np.array_equal(*(np.asarray(Image.open(made[w])) for w in ("web", "local")))

    # A manifest on the server reads its rows' relative paths as URLs beside it.
    pq.write_table(pa.table({"content": ["photo.png", "nope.png"],
                             "style": ["painting.png"] * 2}), folder / "m.parquet")
    result = runner.invoke(app, ["manifest", "validate", f"{url}/m.parquet"])
    assert result.exit_code == 2, result.output
    assert f"invalid row 1: {url}/nope.png: not found" in result.output
    assert "1 valid, 1 invalid" in result.output
    ran = run_cli(f"{url}/m.parquet", tmp_path / "out", "--skip-bad-rows")
    assert ran.exit_code == 1, ran.output  # the row refused
    assert f'href="{url}/photo.png"' in (tmp_path / "out" / "report.html").read_text()


def test_a_fetched_copy_read_again_is_marked_used(web):
    """The copy of an object is fetched once; each later read marks it used, which `cache
    clear --unused-for` goes by."""
    import os

    from pipeline.io.fetch import local_copy

    url, _ = web
    copy = local_copy(f"{url}/photo.png")
    os.utime(copy, (1, 1))
    assert local_copy(f"{url}/photo.png") == copy and copy.stat().st_mtime > 1


@pytest.mark.parametrize("where", ["", "unversioned/"])
def test_an_image_written_again_at_its_size_is_stylized_again(web, tmp_path, where):
    """A web server may name a file's version by its time alone (Last-Modified, no ETag), or
    not at all: a photo replaced by another of the very same byte size is read again and its
    job made again, under the new bytes' key, and its thumbnail in the report; unchanged, it
    is found done."""
    import os

    url, folder = web
    (folder / where).mkdir(exist_ok=True)
    photo = folder / where / "same-size.png"
    make_photo((48, 40), seed=5).save(photo, compress_level=0)
    size = photo.stat().st_size
    pq.write_table(pa.table({"content": [f"{url}/{where}same-size.png"],
                             "style": [f"{url}/painting.png"], "output": ["o.png"]}),
                   tmp_path / "m.parquet")
    out = tmp_path / "out"

    def run() -> tuple[str, str]:
        ran = run_cli(tmp_path / "m.parquet", out)
        assert ran.exit_code == 0, ran.output
        return cell(ran.output, "done now"), read_metadata(out / "o.png")["job_key"]

    def thumbnails() -> set[bytes]:
        return {p.read_bytes() for p in (out / "report_files" / "thumbs").glob("*.jpg")}

    done, first = run()
    assert done == "1"
    before = thumbnails()
    make_photo((48, 40), seed=6).save(photo, compress_level=0)
    assert photo.stat().st_size == size
    later = photo.stat().st_mtime + 10  # in a second of its own: Last-Modified's grain
    os.utime(photo, (later, later))
    done, second = run()
    assert done == "1" and second != first
    assert len(before & thumbnails()) == 1  # the painting's: the photo's and output's are new
    assert run() == ("0", second)


def test_a_url_that_cannot_be_read_is_one_line_within_seconds(web, tmp_path, monkeypatch):
    url, _ = web
    style = f"{url}/painting.png"
    out = ["-o", str(tmp_path / "a.png"), *FAST]
    _one_line_error(["stylize", f"{url}/nope.png", style, *out], f"{url}/nope.png: not found")
    _one_line_error(["stylize", f"{url}/private/photo.png", style, *out],
                    f"{url}/private/photo.png: the server answered HTTP 403 (Forbidden)")
    refused = f"http://127.0.0.1:{free_port()}/photo.png"  # nothing listens there
    _one_line_error(["stylize", refused, style, *out],
                    f"{refused}: cannot fetch it: Cannot connect to host")

    # A server that takes the connection and never answers: the read's timeout ends the wait
    # (shortened here; the timeouts are given to fsspec's client, whose own wait is minutes).
    monkeypatch.setattr(storage, "HTTP_TIMEOUTS_S", {"sock_connect": 2, "sock_read": 0.5})
    storage._filesystem.cache_clear()
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        hung = f"http://127.0.0.1:{silent.getsockname()[1]}/photo.png"
        _one_line_error(["stylize", hung, style, *out], f"{hung}: cannot fetch it: Timeout")


def test_a_web_server_is_not_written_to(web, tmp_path):
    url, folder = web
    inputs = [f"{url}/photo.png", f"{url}/painting.png"]
    read_only = "a web server's URL is read, not written"
    _one_line_error(["stylize", *inputs, "-o", f"{url}/out.png", *FAST], read_only)
    _one_line_error(["manifest", "build", "--content", inputs[0], "--style", inputs[1],
                     "-o", f"{url}/m.parquet"], read_only)
    pq.write_table(pa.table({"content": ["photo.png"], "style": ["painting.png"]}),
                   folder / "m.parquet")
    _one_line_error(["run", f"{url}/m.parquet", "--out", f"{url}/out"], read_only)
    assert sorted(p.name for p in folder.iterdir()) == ["m.parquet", "painting.png",
                                                        "photo.png"]
