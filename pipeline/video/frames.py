"""What the frame chain and the multi-pass scheme share: a clip's frames as the optimizer takes
them, a finished frame, and the parameters of the frames after the first."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..api import NO_REGIONS, ImageSource, Regions, StyleParams
from ..gatys.color import luminance
from .params import VideoParams


@dataclass
class Frame:
    """One stylized frame of one clip."""

    clip: int
    index: int
    pixels: np.ndarray           # [H, W, 3] uint8, the working size
    losses: dict[str, float]
    iterations: int
    seconds: float
    resumed: bool = False        # read back from an earlier run, not optimized now


@dataclass
class ClipSource:
    """A clip's frames by index (decoded ahead by the caller), how many there are, and the
    styles it is stylized with."""

    frame: Callable[[int], np.ndarray]
    count: int
    styles: Sequence[ImageSource]
    regions: Regions = NO_REGIONS  # masks of the frame's shape, the same for every frame


def later_params(params: StyleParams, video: VideoParams) -> StyleParams:
    """The parameters of a frame after the first (see the module docstring)."""
    if video.temporal_weight == 0:  # independent frames: each is a first frame
        return params
    return dataclasses.replace(params, iterations=video.frame_iterations, scales=1,
                               tol_window=min(video.frame_tol_window, video.frame_iterations))


def to_pixels(image: Tensor) -> np.ndarray:
    """[3, H, W] float 0-255 -> [H, W, 3] uint8."""
    return image.round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()


def to_tensor(pixels: np.ndarray) -> Tensor:
    """[H, W, 3] uint8 -> [3, H, W] float."""
    return torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1).float()


def for_transfer(image: Tensor, params: StyleParams) -> Tensor:
    """An earlier stylized frame as the optimizer sees images: its luminance with
    color=luminance (the colours are put back after)."""
    return luminance(image[0])[None] if params.color == "luminance" else image
