"""Content-addressed on-disk cache of targets (content features, style Grams), and of the optical
flows between video frames (video/flow.py).

A key is the sha256 of everything the tensors depend on: the image's bytes, the size it was
resized to and how, the model (backend + digest), the layers and the input normalization.
Changing any of them changes the key, so an entry is never stale, only unused. Entries are
safetensors files written atomically and carrying their key and a checksum of their tensors;
one that fails to load or verify is deleted and recomputed, never used. Targets that are not
finite (damaged weights) are refused, not cached.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from safetensors.torch import load, save
from torch import Tensor

from ..errors import NonFiniteError
from ..io.files import atomic_write_bytes, mark_used
from ..io.mirror import fetch_missing
from ..io.tensor_tree import tree_digest

log = logging.getLogger("pipeline.targets")

# How an image file becomes the pixels its targets are made from (io/images.read_rgb_for).
RESAMPLE = "lanczos, jpeg drafted to 4x"


def target_key(kind: str, image_digest: str, size: tuple[int, int], model: dict[str, str],
               layers: Sequence[str]) -> str:
    """`model` holds backend, digest, normalization and pooling."""
    payload = {"kind": kind, "image": image_digest, "size": list(size), "resample": RESAMPLE,
               "model": model, "layers": list(layers), "format": 2}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


class NonFiniteTargets(NonFiniteError):
    """Targets with inf/NaN in them: never cached, never optimized against."""


class TargetCache:
    """Disk cache under `root` (None: memory only) plus a small in-process memo."""

    def __init__(self, root: Path | None, memo_entries: int = 32):
        self.root = root
        self.memo: OrderedDict[str, dict[str, Tensor]] = OrderedDict()
        self.memo_entries = memo_entries
        self.hits = self.misses = 0

    def path(self, key: str) -> Path:
        assert self.root is not None
        return self.root / key[:2] / f"{key}.safetensors"

    def _load(self, key: str) -> dict[str, Tensor] | None:
        if self.root is None:
            return None
        fetch_missing(path := self.path(key))  # a cache in object storage: another's entry
        if not path.is_file():
            return None
        try:
            data = path.read_bytes()
            tensors = load(data)
            meta = json.loads(data[8:8 + int.from_bytes(data[:8], "little")])["__metadata__"]
            if meta["key"] == key and meta["checksum"] == tree_digest(tensors):
                mark_used(path)
                return tensors
        except Exception:  # truncated, garbled, foreign: all the same to us
            pass
        log.warning("targets: cache entry %s is corrupt; recomputing", path.name)
        path.unlink(missing_ok=True)
        return None

    def get(self, key: str, compute: Callable[[], dict[str, Tensor]], label: str,
            store: bool = True) -> dict[str, Tensor]:
        """The targets of `key`: from memory, the disk, or `compute()`. store=False: computed
        every time and kept nowhere (a video frame's). fp16 tensors stay fp16 (flows: half
        the disk); others are kept in fp32. An empty `label` logs nothing (one per frame)."""
        if not store:
            return _host(compute())
        if key in self.memo:
            self.memo.move_to_end(key)
            self.hits += 1
            if self.root is not None:  # its entry on disk is in use too
                mark_used(self.path(key))
            return self.memo[key]
        tensors = self._load(key)
        if tensors is not None:
            self.hits += 1
            if label:
                log.info("targets: %s: cache hit %s", label, key[:12])
        else:
            self.misses += 1
            start = time.perf_counter()
            tensors = _host(compute())
            seconds = time.perf_counter() - start
            bad = [k for k, v in tensors.items() if not torch.isfinite(v).all()]
            if bad:
                raise NonFiniteTargets(f"targets: {label}: {', '.join(bad)} hold inf/NaN (are "
                                       "the weights damaged?); not cached")
            if self.root is not None:
                meta = {"key": key, "checksum": tree_digest(tensors)}
                atomic_write_bytes(self.path(key), save(tensors, metadata=meta))
            if label:
                log.info("targets: %s: computed in %.2f s, cached as %s", label, seconds,
                         key[:12])
        self.memo[key] = tensors
        if len(self.memo) > self.memo_entries:
            self.memo.popitem(last=False)
        return tensors


def _host(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k: (v if v.dtype == torch.float16 else v.float()).detach().cpu().contiguous()
            for k, v in tensors.items()}


__all__ = ["TargetCache", "target_key"]
