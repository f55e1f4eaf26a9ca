"""Nested tensors: in dicts, lists and tuples, as `state_dict()` returns them.

Checkpoints move optimizer states between devices, and CPU shards slice them and the targets
per sample; one walker serves all of them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

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
