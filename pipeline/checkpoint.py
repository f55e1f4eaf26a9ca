"""Batch checkpoints: images, optimizer state and iteration, written atomically.

One file per batch under <out>/.checkpoints/, named by the batch id (a hash of its job keys).
A checkpoint whose job keys or format do not match, or that fails to load, is ignored and
deleted: the batch then starts over, which is slower but never wrong.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .engine import tree_to
from .files import atomic_path

log = logging.getLogger("pipeline.run")

# Bumped when the optimizer state's layout changes (2: the compact L-BFGS history); a
# checkpoint of another format is ignored like a foreign one.
FORMAT = 2


def checkpoint_path(out_dir: Path, batch_id: str) -> Path:
    return out_dir / ".checkpoints" / f"{batch_id}.pt"


def save_checkpoint(path: Path, keys: list[str], iteration: int, images: Tensor,
                    optimizer_state: dict[str, Any]) -> None:
    state = {"format": FORMAT, "keys": keys, "iteration": iteration,
             "images": images.detach().cpu(), "optimizer": tree_to(optimizer_state, "cpu")}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: Path, keys: list[str]) -> tuple[int, Tensor, dict[str, Any]] | None:
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if state.get("format") == FORMAT and state["keys"] == keys:
            return state["iteration"], state["images"], state["optimizer"]
    except Exception as e:  # a torn or foreign file: start the batch over
        log.warning("checkpoint %s unreadable (%s); starting the batch over", path.name, e)
    path.unlink(missing_ok=True)
    return None
