"""Optical flow between frames with OpenCV's DIS (no downloaded weights), in both directions,
at the working resolution, and the temporal targets a frame is optimized against.

Flow is computed on a thread ahead of the optimizer (`Ahead`): OpenCV releases the GIL, so
frame i+1's flows are ready when frame i's optimization ends. Flows are cached as the targets
are (targets/cache.py, under `flows/`), keyed by the two frames' pixels and the method: the
same video at the same size with another style, weight or part reuses them. They are stored
in fp16 (a hundredth of a pixel at the flows a frame holds), half the disk of fp32.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..errors import SourceMissingError
from ..gatys.temporal import Temporal, consistency, nearest_first, warp
from ..targets.cache import TargetCache

_local = threading.local()


def _dis() -> Any:
    """One DIS instance per thread (it keeps buffers between calls)."""
    if getattr(_local, "dis", None) is None:
        try:
            import cv2
        except ImportError:
            raise SourceMissingError("video needs OpenCV: pip install "
                                     "'style-pipeline[video]'") from None
        _local.dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    return _local.dis


def _gray(rgb: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray((rgb @ np.array([0.299, 0.587, 0.114])).round().clip(0, 255)
                                .astype(np.uint8))


def flow(frm: np.ndarray, to: np.ndarray) -> np.ndarray:
    """[H, W, 2] (dx, dy): pixel p of `frm` shows what `to` shows at p + flow(p)."""
    return _dis().calc(_gray(frm), _gray(to), None)


def flow_pair(now: np.ndarray, before: np.ndarray) -> tuple[Tensor, Tensor]:
    """(back, forward) as [1, 2, H, W]: from `now` to `before` and from `before` to `now`."""
    def tensor(f: np.ndarray) -> Tensor:
        return torch.from_numpy(f).permute(2, 0, 1)[None].float()

    return tensor(flow(now, before)), tensor(flow(before, now))


def flow_key(now: np.ndarray, before: np.ndarray) -> str:
    """What decides a flow pair: both frames' pixels and the method (OpenCV's version too)."""
    import cv2

    h = hashlib.sha256(f"dis-medium|{cv2.__version__}|{now.shape}|{before.shape}".encode())
    h.update(np.ascontiguousarray(now).tobytes())
    h.update(np.ascontiguousarray(before).tobytes())
    return h.hexdigest()


def cached_flow_pair(now: np.ndarray, before: np.ndarray, cache: TargetCache
                     ) -> tuple[Tensor, Tensor]:
    """flow_pair, from `cache` when it holds it (stored in fp16)."""
    def compute() -> dict[str, Tensor]:
        back, forward = flow_pair(now, before)
        return {"back": back.half(), "forward": forward.half()}

    found = cache.get(flow_key(now, before), compute, "")
    return found["back"].float(), found["forward"].float()


def temporal_target(flows: Sequence[tuple[Tensor, Tensor]], earlier: Sequence[Tensor],
                    gamma: float) -> tuple[Temporal, Tensor]:
    """The temporal term of a frame and its starting image. `flows`: (back, forward) to each
    earlier frame j, nearest first; `earlier`: those frames' stylized images [1, 3, H, W].
    The start is the previous stylized frame warped into this one (Ruder et al.'s
    prevWarped)."""
    warped = [warp(image, back) for image, (back, _) in zip(earlier, flows, strict=True)]
    weights = nearest_first([consistency(back, fwd) for back, fwd in flows])
    return Temporal.of(warped, weights, gamma), warped[0]


class Ahead:
    """Each frame's flows to its earlier frames, computed on a worker thread one frame ahead
    of whoever asks for them."""

    def __init__(self, frame: Callable[[int], np.ndarray], offsets: Sequence[int],
                 cache: TargetCache):
        self.frame, self.offsets, self.cache = frame, tuple(offsets), cache
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="flow")
        self.pending: dict[int, Future[list[tuple[Tensor, Tensor]]]] = {}

    def _flows(self, i: int) -> list[tuple[Tensor, Tensor]]:
        return [cached_flow_pair(self.frame(i), self.frame(i - j), self.cache)
                for j in self.offsets if j <= i]

    def request(self, i: int) -> None:
        if i not in self.pending:
            self.pending[i] = self.pool.submit(self._flows, i)

    def get(self, i: int) -> list[tuple[Tensor, Tensor]]:
        self.request(i)
        return self.pending.pop(i).result()

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
