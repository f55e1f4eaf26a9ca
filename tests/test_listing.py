"""A scan learns the versions of a bucket folder's objects from the folder's listing, not from
a HEAD request each (io/listing.py): the same versions, the same job keys, and far fewer
requests, on a real S3 server (tests/s3_server.py)."""

from __future__ import annotations

import pytest

from pipeline.bulk.manifest import write_manifest
from pipeline.bulk.scan import scan
from pipeline.io import listing, objects, storage
from tests.conftest import make_painting, make_photo
from tests.s3_server import upload, use_server

pytest.importorskip("s3fs", reason="the s3 extra: pip install -e '.[s3]'")

PHOTOS = 40  # more than listing.WORTH_LISTING: their folder is listed


@pytest.fixture
def bucket(s3_server, monkeypatch, tmp_path):
    """s3://bucket/<test>/photos/p00.png ... and s3://bucket/<test>/painting.png."""
    endpoint, _ = s3_server
    use_server(monkeypatch, endpoint)
    local = tmp_path / "in"
    (local / "photos").mkdir(parents=True)
    for i in range(PHOTOS):
        make_photo((40, 30), seed=i).save(local / "photos" / f"p{i:02d}.png")
    make_painting((40, 30)).save(local / "painting.png")
    url = f"s3://bucket/{tmp_path.name}"
    upload(local, url)
    return url


def _rows(url: str, names: list[str]) -> list[dict]:
    return [{"content": f"{url}/photos/{n}", "style": f"{url}/painting.png", "size": 32}
            for n in names]


def _asked(monkeypatch, url: str) -> tuple[list[str], list[dict]]:
    """The URLs under `url` asked by HEAD during a scan (whoever asks: not another test's
    thread), and the listing requests made."""
    heads: list[str] = []
    lists: list[dict] = []
    fs = storage.filesystem(url)[0]
    info, call = fs.info, fs.call_s3

    def head(path, **kwargs):
        if f"s3://{path}".startswith(f"{url}/"):
            heads.append(f"s3://{path}")
        return info(path, **kwargs)

    monkeypatch.setattr(fs, "info", head)

    def counted(method, *args, **kwargs):
        listed = f"s3://{kwargs.get('Bucket')}/{kwargs.get('Prefix')}"
        if method == "list_objects_v2" and listed.startswith(f"{url}/"):
            lists.append(kwargs)
        return call(method, *args, **kwargs)

    monkeypatch.setattr(fs, "call_s3", counted)
    return heads, lists


def _keys(manifest, tmp_path, decode: bool = False) -> list[tuple[str, tuple[int, int]]]:
    found = scan(manifest, tmp_path / "out", {}, decode=decode)
    assert found.errors == []
    return [(job.key, job.size) for job in found.jobs]


@pytest.mark.parametrize("decode", [False, True], ids=["run", "validate"])
def test_a_folder_s_objects_are_known_from_its_listing(bucket, monkeypatch, tmp_path, decode):
    """A run's scan and `manifest validate` alike: one listing page for the folder's 40
    photos, a HEAD for the painting alone, and the keys a scan by HEADs gives."""
    manifest = write_manifest(_rows(bucket, [f"p{i:02d}.png" for i in range(PHOTOS)]),
                              tmp_path / "m.parquet")
    with monkeypatch.context() as m:
        m.setattr(listing, "WORTH_LISTING", 10**9)  # no folder worth a listing
        by_heads = _keys(manifest, tmp_path, decode)
    heads, lists = _asked(monkeypatch, bucket)
    assert _keys(manifest, tmp_path, decode) == by_heads
    assert heads == [f"{bucket}/painting.png"]
    assert len(lists) == 1 and lists[0]["Prefix"].endswith("/photos/")


def test_a_listing_version_finds_what_a_head_remembered(bucket, monkeypatch, tmp_path):
    """The digest a scan by HEADs remembered is found by a scan by listing (the same version
    from both): no object is downloaded again."""
    manifest = write_manifest(_rows(bucket, [f"p{i:02d}.png" for i in range(PHOTOS)]),
                              tmp_path / "m.parquet")
    with monkeypatch.context() as m:
        m.setattr(listing, "WORTH_LISTING", 10**9)
        first = _keys(manifest, tmp_path)
    hashed: list[object] = []
    digest = objects.file_digest
    monkeypatch.setattr(objects, "file_digest", lambda p: hashed.append(p) or digest(p))
    assert _keys(manifest, tmp_path) == first and hashed == []


def test_scattered_objects_of_a_folder_stop_its_listing(bucket, monkeypatch, tmp_path):
    """Rows ask 6 photos at a time. Photos far apart: the page from the first of them finds
    one, and the rest are asked by HEAD; close ones after that are listed again; after two
    sparse listings in a row (SPARSE_TRIES here) the folder is not listed again in the scan,
    not even for close ones. The keys are those of a scan by HEADs."""
    chunks = [(0, 35, 36, 37, 38, 39), (1, 2, 3, 4, 5, 6), (7, 30, 31, 32, 33, 34),
              (8, 25, 26, 27, 28, 29), (9, 10, 11, 12, 13, 14)]
    names = [f"p{i:02d}.png" for chunk in chunks for i in chunk]
    manifest = write_manifest(_rows(bucket, names), tmp_path / "m.parquet")
    with monkeypatch.context() as m:
        m.setattr(listing, "WORTH_LISTING", 10**9)
        expected = _keys(manifest, tmp_path)
    monkeypatch.setattr(listing, "WORTH_LISTING", 6)
    monkeypatch.setattr(listing, "SPARSE_TRIES", 2)
    monkeypatch.setattr("pipeline.bulk.scan.AHEAD", 6)  # the rows asked ahead together
    heads, lists = _asked(monkeypatch, bucket)
    assert _keys(manifest, tmp_path) == expected
    assert len(lists) == 4  # none for the last chunk
    listed = {0, *chunks[1], 7, 8, 25, 26, 27}
    assert sorted(heads) == sorted([f"{bucket}/painting.png",
                                    *(f"{bucket}/photos/p{i:02d}.png" for chunk in chunks
                                      for i in chunk if i not in listed)])


def test_a_missing_object_is_the_row_s_error_and_its_folder_is_still_listed(
        bucket, monkeypatch, tmp_path):
    """The listing does not find it: it is asked by HEAD, whose answer is the row's error."""
    names = [f"p{i:02d}.png" for i in range(PHOTOS)]
    manifest = write_manifest(_rows(bucket, [*names[:20], "gone.png", *names[20:]]),
                              tmp_path / "m.parquet")
    heads, lists = _asked(monkeypatch, bucket)
    found = scan(manifest, tmp_path / "out", {}, decode=False)
    assert [(e.row, str(e)) for e in found.errors] == [
        (20, f"row 20: {bucket}/photos/gone.png: no such object (or no such bucket)")]
    assert len(found.jobs) == PHOTOS and len(lists) == 1
    assert set(heads) == {f"{bucket}/painting.png", f"{bucket}/photos/gone.png"}


def test_a_store_that_refuses_to_list_is_asked_object_by_object(bucket, monkeypatch,
                                                                 tmp_path):
    """Credentials that may read objects but not list the bucket: the scan goes on by HEAD,
    and tries no listing of that folder again."""
    manifest = write_manifest(_rows(bucket, [f"p{i:02d}.png" for i in range(PHOTOS)]),
                              tmp_path / "m.parquet")
    with monkeypatch.context() as m:
        m.setattr(listing, "WORTH_LISTING", 10**9)
        expected = _keys(manifest, tmp_path)
    fs = storage.filesystem(bucket)[0]
    call, refused = fs.call_s3, []

    def no_listing(method, *args, **kwargs):
        if method == "list_objects_v2":
            refused.append(kwargs)
            raise PermissionError("Access Denied")
        return call(method, *args, **kwargs)

    monkeypatch.setattr(fs, "call_s3", no_listing)
    monkeypatch.setattr("pipeline.bulk.scan.AHEAD", PHOTOS // 2)
    assert _keys(manifest, tmp_path) == expected
    assert len(refused) == 1
