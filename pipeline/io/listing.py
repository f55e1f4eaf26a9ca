"""The versions of many objects of one S3 folder from the folder's listing, instead of a HEAD
request each: a listing page names up to a thousand objects with their ETags and sizes in one
round trip, for the client's CPU time of a few dozen HEADs (signing and parsing a request
costs more than parsing a listed object), so the scan of a bucket dataset, which every rerun
makes, asks the store far less often and costs far less CPU.

A scan asks for its rows' objects a few hundred at a time (bulk/scan.py). Each folder with
enough of them is listed from just before its first needed key, in key order, and the listing
stops at its last one. A manifest in the bucket's order (as `pipeline manifest build` writes
one) then costs a page or two per few hundred rows; one that reads scattered objects of a
large folder finds too few of them on a page, and after a few such listings in a row that
folder is not listed again in the scan. What a listing does not find (missing objects, other
protocols, a versioned URL, no permission to list) is asked by HEAD, as before: its error is
the row's.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from .fetch import FETCH_THREADS, Version, version_of
from .storage import filesystem, is_url, protocol

log = logging.getLogger("pipeline.storage")

PAGE = 1000  # the most keys S3 gives a page
# A page is worth its request where it finds at least as many needed objects as the HEADs
# that it saves would take in one round trip all together. A page asks for about twice the
# objects still needed, so that it costs less CPU than their HEADs wherever it is that dense.
WORTH_LISTING = FETCH_THREADS
# Listings of a folder in a row that found too few: then it is asked object by object. One
# alone may be the edge between two runs of a manifest's objects, far apart in the folder.
SPARSE_TRIES = 3


class Lister:
    """Lists folders for one scan, remembering the folders whose listing did not pay."""

    def __init__(self) -> None:
        self.sparse: dict[tuple[Any, str, str], int] = {}  # (client, bucket, folder) -> tries

    def versions(self, urls: Iterable[object]) -> dict[str, Version]:
        """What the listings of their folders say of `urls` (S3 only), by URL: every needed
        object a listing found; none of a folder listed too sparsely, or not at all."""
        folders: dict[tuple[Any, str, str], dict[str, str]] = defaultdict(dict)  # key -> URL
        for url in dict.fromkeys(str(u) for u in urls if is_url(u)):
            if protocol(url) in ("s3", "s3a"):
                fs, path = filesystem(url)
                bucket, key, version_id = fs.split_path(path)
                if not version_id:  # a listing names the latest versions only
                    folders[fs, bucket, key.rpartition("/")[0]][key] = url
        found: dict[str, Version] = {}
        for where, wanted in folders.items():
            if len(wanted) >= WORTH_LISTING and self.sparse.get(where, 0) < SPARSE_TRIES:
                found |= self._listed(where, wanted)
        return found

    def _listed(self, where: tuple[Any, str, str], wanted: dict[str, str]
                ) -> dict[str, Version]:
        fs, bucket, folder = where
        keys = sorted(wanted)
        prefix = f"{folder}/" if folder else ""
        ask: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix, "Delimiter": "/"}
        if start := max(keys[0][:-1], prefix):  # sorts just before the first (exclusive)
            ask["StartAfter"] = start
        found: dict[str, Version] = {}
        try:
            while True:
                left = len(keys) - len(found)
                page = fs.call_s3("list_objects_v2", MaxKeys=min(PAGE, 2 * left + 8), **ask)
                entries = page.get("Contents", [])
                hits = [e for e in entries if e["Key"] in wanted]
                for e in hits:
                    url = wanted[e["Key"]]
                    found[url] = version_of(url, fs, f"{bucket}/{e['Key']}",
                                            e.get("ETag"), e.get("Size"), e.get("LastModified"))
                if len(found) == len(keys) or not page.get("IsTruncated") or \
                        (entries and entries[-1]["Key"] >= keys[-1]):
                    self.sparse.pop(where, None)
                    return found
                if len(hits) < min(WORTH_LISTING, left):  # too sparse to go on
                    self.sparse[where] = self.sparse.get(where, 0) + 1
                    return found
                ask = {**ask, "ContinuationToken": page["NextContinuationToken"]}
                ask.pop("StartAfter", None)
        except Exception as e:  # no permission to list, say: each object by HEAD instead
            log.debug("cannot list s3://%s/%s (%s): asking each object", bucket, prefix, e)
            self.sparse[where] = SPARSE_TRIES
            return found
