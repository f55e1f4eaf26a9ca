"""The lease of a run folder in object storage against a store that honours conditional
creates (as AWS S3 does; the rclone server of the other tests does not): an in-memory store."""

from __future__ import annotations

import json
import time

import pytest

from pipeline.bulk import locks


class Store:
    """fsspec's calls the lease makes, on a dict; `create` fails on an existing key as S3's
    If-None-Match does; `before_create` runs first (another machine's claim landing then)."""

    def __init__(self):
        self.objects: dict[str, bytes] = {}
        self.before_create = lambda: None

    def invalidate_cache(self, key):
        pass

    def cat_file(self, key):
        if key not in self.objects:
            raise FileNotFoundError(key)
        return self.objects[key]

    def pipe_file(self, key, data, mode="overwrite"):
        if mode == "create":
            self.before_create()
            if key in self.objects:
                raise FileExistsError(key)
        self.objects[key] = data

    def rm_file(self, key):
        self.objects.pop(key, None)


@pytest.fixture
def store(monkeypatch):
    store = Store()
    monkeypatch.setattr(locks, "filesystem", lambda url: (store, url.removeprefix("s3://")))
    monkeypatch.setattr(locks, "READ_BACK_S", 0.0)
    return store


KEY = "bucket/out/.run-lease"


def _lease(run_id, host="elsewhere", pid=1, age=0.0):
    return json.dumps({"run_id": run_id, "host": host, "pid": pid,
                       "renewed_at": time.time() - age}).encode()


def test_a_free_folder_is_leased_for_the_run_and_given_back(store):
    with locks.bucket_lease("s3://bucket/out", "run-a"):
        held = json.loads(store.objects[KEY])
        assert held["run_id"] == "run-a" and held["pid"] > 0
    assert KEY not in store.objects


def test_a_claim_that_loses_the_race_is_refused(store):
    """Another machine's claim lands between our look and our conditional create."""
    store.before_create = lambda: store.objects.setdefault(KEY, _lease("run-b"))
    with pytest.raises(locks.RunLocked, match="on elsewhere, process 1"), \
            locks.bucket_lease("s3://bucket/out", "run-a"):
        pass
    assert json.loads(store.objects[KEY])["run_id"] == "run-b"  # theirs, untouched


def test_a_live_lease_refuses_and_an_expired_one_is_taken_over(store):
    store.objects[KEY] = _lease("run-b", age=5)
    with pytest.raises(locks.RunLocked, match="renewed its lease 5 s ago"), \
            locks.bucket_lease("s3://bucket/out", "run-a"):
        pass
    store.objects[KEY] = _lease("run-b", age=locks.EXPIRES_S + 1)  # its run was killed
    with locks.bucket_lease("s3://bucket/out", "run-a"):
        assert json.loads(store.objects[KEY])["run_id"] == "run-a"
