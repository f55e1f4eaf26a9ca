"""A worker's uploads into a run folder in object storage go on in the background, in order,
and a failure is never lost: no store needed (the uploads are recorded, not sent)."""

from __future__ import annotations

import threading

import pytest

from pipeline.errors import InputError
from pipeline.io import mirror
from pipeline.io.files import atomic_write_bytes


@pytest.fixture
def background(tmp_path, monkeypatch):
    """A folder mirrored to s3://bucket/run with background uploads; yields (folder, the
    uploads made so far as (url, bytes), a gate the uploads wait on)."""
    monkeypatch.delenv(mirror.ENV, raising=False)
    monkeypatch.setattr(mirror, "_BACKGROUND", None)
    made: list[tuple[str, bytes]] = []
    gate = threading.Event()

    def put_file(path, url):
        gate.wait(10)
        made.append((url, path.read_bytes()))

    monkeypatch.setattr(mirror, "put_file", put_file)
    mirror.mirror(tmp_path, "s3://bucket/run")
    mirror.upload_in_background()
    yield tmp_path, made, gate
    gate.set()
    mirror._BACKGROUND.pool.shutdown()


def test_a_write_does_not_wait_for_its_upload_and_a_flush_does(background):
    folder, made, gate = background
    atomic_write_bytes(folder / "a.png", b"first")
    atomic_write_bytes(folder / "ledger" / "part.parquet", b"second")
    assert made == []  # both written here, the first upload still held at the gate
    gate.set()
    mirror.flush_uploads()
    assert made == [("s3://bucket/run/a.png", b"first"),
                    ("s3://bucket/run/ledger/part.parquet", b"second")]


def test_after_a_failed_upload_nothing_more_is_sent_or_reported(background, monkeypatch):
    """A job written after a failed upload is never reported done, and the failure is raised
    by every check and flush from then on."""
    folder, made, gate = background
    gate.set()
    refused = []

    def refuse_outputs(path, url):
        if url.endswith("out.png"):
            refused.append(url)
            raise InputError(f"{url}: cannot reach the store at http://127.0.0.1:1")
        made.append((url, path.read_bytes()))

    monkeypatch.setattr(mirror, "put_file", refuse_outputs)
    reported = []
    atomic_write_bytes(folder / "first.png", b"1")
    mirror.after_uploads(lambda: reported.append("first"))
    atomic_write_bytes(folder / "out.png", b"2")
    atomic_write_bytes(folder / "ledger" / "part.parquet", b"3")
    mirror.after_uploads(lambda: reported.append("second"))
    with pytest.raises(mirror.UploadFailed, match=r"out\.png: cannot reach the store"):
        mirror.flush_uploads()
    assert reported == ["first"] and refused == ["s3://bucket/run/out.png"]
    assert made == [("s3://bucket/run/first.png", b"1")]  # not the ledger part after it
    with pytest.raises(mirror.UploadFailed):
        mirror.check_uploads()


def test_an_output_is_dropped_here_once_it_and_its_ledger_rows_are_in_the_bucket(
        background, tmp_path_factory):
    """A bulk run's outputs in object storage would otherwise fill this machine's disk; one
    whose upload failed stays (written here, not there), and so does a file of a folder that
    is not mirrored."""
    folder, made, gate = background
    atomic_write_bytes(folder / "out.png", b"1")
    atomic_write_bytes(folder / "ledger" / "part.parquet", b"2")
    elsewhere = tmp_path_factory.mktemp("local") / "out.png"
    atomic_write_bytes(elsewhere, b"3")
    mirror.drop_local([folder / "out.png", elsewhere])
    assert (folder / "out.png").is_file()  # its upload is still held at the gate
    gate.set()
    mirror.flush_uploads()
    assert [url for url, _ in made] == ["s3://bucket/run/out.png",
                                        "s3://bucket/run/ledger/part.parquet"]
    assert not (folder / "out.png").exists() and (folder / "ledger" / "part.parquet").is_file()
    assert elsewhere.read_bytes() == b"3"


def test_an_output_whose_upload_failed_is_kept_here(background, monkeypatch):
    folder, _, gate = background
    gate.set()

    def refuse(path, url):
        raise InputError(f"{url}: cannot reach the store at http://127.0.0.1:1")

    monkeypatch.setattr(mirror, "put_file", refuse)
    atomic_write_bytes(folder / "out.png", b"1")
    mirror.drop_local([folder / "out.png"])
    with pytest.raises(mirror.UploadFailed):
        mirror.flush_uploads()
    assert (folder / "out.png").read_bytes() == b"1"


def test_a_file_deleted_before_its_upload_ran_is_no_failure(background):
    folder, made, gate = background
    atomic_write_bytes(folder / ".checkpoints" / "job-1.pt", b"state")
    (folder / ".checkpoints" / "job-1.pt").unlink()  # its job ended before the upload
    gate.set()
    mirror.flush_uploads()
    assert made == []


def test_a_shared_cache_the_store_refuses_is_said_once_and_the_work_goes_on(
        tmp_path, monkeypatch, caplog):
    """A cache in object storage is a convenience, not a record: the first upload or fetch
    the store refuses is said once, and from then on the process does not ask it again (each
    ask could wait out its deadline); this machine's copy serves and nothing is raised. A
    run's own folder, mirrored beside it, still fails its writes."""
    monkeypatch.delenv(mirror.ENV, raising=False)
    monkeypatch.setattr(mirror, "_BACKGROUND", None)
    monkeypatch.setattr(mirror, "check_store", lambda url: None)
    monkeypatch.setattr(mirror, "_SAID", set())
    asked = []

    def refuse(*args):
        asked.append(args)
        raise InputError("s3://bucket/x: cannot reach the store at http://127.0.0.1:1")

    monkeypatch.setattr(mirror, "put_file", refuse)
    monkeypatch.setattr(mirror, "filesystem", lambda url: (type("Down", (), {
        "get_file": staticmethod(refuse)})(), url))
    cache, run = tmp_path / "cache", tmp_path / "run"
    mirror.attach_cache("s3://bucket/cache", cache)
    mirror.mirror(run, "s3://bucket/run")
    assert mirror.remote_of(cache / "targets" / "ab" / "x.safetensors") == (
        "s3://bucket/cache/targets/ab/x.safetensors")
    assert mirror.remote_of(cache / "trt" / "engine") is None  # each machine's own
    with caplog.at_level("WARNING", "pipeline.storage"):
        mirror.fetch_missing(cache / "probes" / "p.json")
        atomic_write_bytes(cache / "targets" / "ab" / "x.safetensors", b"1")
        mirror.fetch_missing(cache / "targets" / "ef" / "z.safetensors")
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and "cannot fetch s3://bucket/cache/probes/p.json" in said[0]
    assert len(asked) == 1  # not asked again
    assert (cache / "targets" / "ab" / "x.safetensors").read_bytes() == b"1"
    with pytest.raises(mirror.UploadFailed, match="cannot reach the store"):
        atomic_write_bytes(run / "out.png", b"3")


def test_threads_that_attach_a_shared_cache_at_once_each_see_every_part(tmp_path,
                                                                        monkeypatch):
    """A scan's threads reach a cache in object storage together: one that went on while
    another was mirroring its parts neither fetched nor uploaded the entries of the parts
    not mirrored yet (a shared cache's entry read again on another machine)."""
    import time
    from concurrent.futures import ThreadPoolExecutor

    monkeypatch.setattr(mirror, "check_store", lambda url: None)
    real = mirror.mirror

    def slowly(local, url, best_effort=False):  # the time a part takes, made visible
        time.sleep(0.01)
        real(local, url, best_effort)

    monkeypatch.setattr(mirror, "mirror", slowly)
    local = tmp_path / "copy"

    def attached(i: int) -> bool:
        time.sleep(0.004 * i)  # arriving while the first is half way
        mirror.attach_cache("s3://bucket/cache", local)
        return all(mirror.is_mirrored(local / part / "entry") for part in mirror.SHARED_CACHE)

    with ThreadPoolExecutor(8) as pool:
        assert all(pool.map(attached, range(8)))
