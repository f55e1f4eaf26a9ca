"""Nested tensors: in dicts, lists and tuples, as `state_dict()` returns them.

Checkpoints move optimizer states between devices and checksum them, and CPU shards slice them
and the targets per sample; one walker serves all of them."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor


def map_tensors(fn: Callable[[Tensor], Tensor], tree: Any) -> Any:
    """`tree` with fn applied to every tensor in it; everything else is kept as it is."""
    if isinstance(tree, Tensor):
        return fn(tree)
    if isinstance(tree, dict):
        return {k: map_tensors(fn, v) for k, v in tree.items()}
    if isinstance(tree, list | tuple):
        return type(tree)(map_tensors(fn, v) for v in tree)
    return tree


def tree_digest(tree: Any) -> str:
    """sha256 of a nested structure: every tensor's dtype, shape and bytes (hashed in place,
    not copied), every other leaf's repr, dict keys in sorted order. What a checkpoint or a
    cache entry is checked against when read back."""
    h = hashlib.sha256()
    _feed(h, tree)
    return h.hexdigest()


def _feed(h: Any, tree: Any) -> None:
    if isinstance(tree, Tensor):
        t = tree.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
    elif isinstance(tree, dict):
        h.update(b"{")
        for key in sorted(tree, key=str):
            h.update(f"{key!r}:".encode())
            _feed(h, tree[key])
        h.update(b"}")
    elif isinstance(tree, list | tuple):
        h.update(b"[")
        for item in tree:
            _feed(h, item)
        h.update(b"]")
    else:
        h.update(f"{tree!r};".encode())
