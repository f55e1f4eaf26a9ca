"""Region masks from files: grayscale masks and colour-coded segmentations, checked against the
image they cover and brought to its size. Decoding is images.py's (any mode, 16 bits, ICC
profiles, EXIF rotation): a mask is read as the luminance of that RGB image."""

from __future__ import annotations

import logging
import os

import numpy as np
import torch
from torch import Tensor

from ..errors import InputError
from .images import check_shape, fit_longest_side, read_rgb
from .pixels import resize_masks

log = logging.getLogger("pipeline.images")
# A segmentation pixel belongs to a colour within this many levels in every channel (JPEG
# and antialiased edges shift colours a little).
COLOR_TOLERANCE = 32
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R 601, as PIL's "L"


def _fit(masks: np.ndarray, path: str | os.PathLike, like: tuple[int, int], to: tuple[int, int],
         role: str) -> Tensor:
    """Masks [R, h, w] in [0, 1] of an image of source size `like` (w, h), at size `to`."""
    size = masks.shape[2], masks.shape[1]
    off = check_shape(path, size, like, role)
    if fit_longest_side(size, max(like)) != like:
        log.warning("%s: %s %dx%d resized to its image's shape %dx%d (aspect ratios differ "
                    "by %.2f%%)", path, role, *size, *like, 100 * off)
    return resize_masks(torch.from_numpy(masks), to).contiguous()


def read_mask(path: str | os.PathLike, like: tuple[int, int], to: tuple[int, int],
              role: str = "mask") -> tuple[Tensor, str]:
    """A mask [1, H, W] in [0, 1] at size `to` (w, h), for an image of source size `like`, and
    the sha256 of its bytes. A colour mask is read as its luminance, with a warning."""
    img, digest = read_rgb(path)
    rgb = np.asarray(img, dtype=np.float32)
    if np.ptp(rgb, axis=2).max(initial=0) > 2:
        log.warning("%s: %s has colours; read as its luminance (white = the region)", path,
                    role)
    gray = (rgb @ LUMA) / 255.0
    if gray.max(initial=0) <= 0:
        raise InputError(f"{path}: {role} is all black: its style would have no region")
    return _fit(gray[None], path, like, to, role), digest


def read_segmentation(path: str | os.PathLike, colors: list[tuple[int, int, int]],
                      like: tuple[int, int], to: tuple[int, int], role: str = "segmentation"
                      ) -> tuple[Tensor, str]:
    """One mask per colour [R, H, W] from a colour-coded image: each pixel to the nearest
    colour within COLOR_TOLERANCE levels per channel, else to no region. InputError for a
    colour no pixel has."""
    img, digest = read_rgb(path)
    rgb = np.asarray(img, dtype=np.int16)
    distance = np.stack([np.abs(rgb - np.array(c, dtype=np.int16)).max(2) for c in colors])
    nearest = distance.argmin(0)
    masks = np.stack([(nearest == i) & (distance[i] <= COLOR_TOLERANCE)
                      for i in range(len(colors))]).astype(np.float32)
    for i, (mask, color) in enumerate(zip(masks, colors, strict=True)):
        if not mask.any():
            raise InputError(f"{path}: no pixel has colour #{bytes(color).hex()} (style "
                             f"{i + 1}'s region)")
    return _fit(masks, path, like, to, role), digest
