"""Images as the trunk takes them (float [3, H, W] tensors on the 0-255 scale) and back, and
results written as image files, rounded once to the file's bit depth. Decoding, colour and the
files' metadata are images.py's, which needs no torch."""

from __future__ import annotations

import dataclasses
import json
import os
import struct
import zlib
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, PngImagePlugin
from torch import Tensor

from .files import atomic_path
from .images import (
    JPEG_QUALITY,
    METADATA_KEY,
    OUTPUT_FORMATS,
    SRGB_ICC,
    check_output_path,
    fit_longest_side,
    output_bit_depth,
    resize,
)


@dataclass(frozen=True)
class SizedImage:
    """An image ready for the trunk, and what identifies it in the target cache."""

    pixels: Tensor   # [3, H, W] float32, RGB, 0-255
    digest: str      # sha256 of the source file's bytes (or of an in-memory image's pixels)
    name: str        # for messages
    keep: bool = True  # its targets go to the disk cache (not a video frame's: seen once)
    # [R, H, W] in [0, 1] (spatial control): a content's, where each of its styles goes; a
    # style's, the one region it is drawn from (its digest then names the mask too)
    regions: Tensor | None = None

    @property
    def size(self) -> tuple[int, int]:
        return self.pixels.shape[2], self.pixels.shape[1]


def rescale(image: SizedImage, longest: int) -> SizedImage:
    """The same image (and cache identity) with its longest side at `longest`; its pixels are
    8-bit values, so the round trip through PIL is exact."""
    size = fit_longest_side(image.size, longest)
    if size == image.size:
        return image
    regions = None if image.regions is None else resize_masks(image.regions, size)
    return dataclasses.replace(image, pixels=to_tensor(resize(to_image(image.pixels), size)),
                               regions=regions)


def resize_masks(masks: Tensor, size: tuple[int, int]) -> Tensor:
    """Masks [R, H, W] in [0, 1] at size (w, h): bilinear, antialiased when shrinking."""
    if (masks.shape[2], masks.shape[1]) == size:
        return masks
    return torch.nn.functional.interpolate(masks[:, None], size=(size[1], size[0]),
                                           mode="bilinear", antialias=True,
                                           align_corners=False)[:, 0].clamp_(0, 1)


def to_tensor(img: Image.Image) -> Tensor:
    """RGB PIL image -> float32 [3, H, W] on the 0-255 scale the trunk expects."""
    return torch.from_numpy(np.asarray(img, dtype=np.float32).copy()).permute(2, 0, 1).contiguous()


def to_image(x: Tensor) -> Image.Image:
    """[3, H, W] on the 0-255 scale -> 8-bit RGB PIL image (clamped, rounded)."""
    arr = x.detach().float().clamp(0, 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(arr, mode="RGB")


def save_image(image: Image.Image | Tensor, path: str | os.PathLike,
               metadata: dict | None = None, bit_depth: int = 0,
               jpeg_quality: int = JPEG_QUALITY) -> str | os.PathLike:
    """Write PNG, JPEG or TIFF by extension, atomically, tagged sRGB, with `metadata` embedded
    as JSON. `image`: 8-bit RGB, or [3, H, W] on the 0-255 scale, rounded here once to the
    file's bit depth (output_bit_depth)."""
    dest, path = path, check_output_path(path, bit_depth)
    fmt = OUTPUT_FORMATS[path.suffix.lower()]
    text = json.dumps(metadata or {}, sort_keys=True, default=str)
    bits = output_bit_depth(path, bit_depth)
    if bits == 16:
        pixels = image if isinstance(image, Tensor) else to_tensor(image)
        arr = _quantize16(pixels)
    else:
        img = to_image(image) if isinstance(image, Tensor) else image
    with atomic_path(dest) as tmp:
        if fmt == "TIFF":
            import tifffile

            tifffile.imwrite(tmp, arr if bits == 16 else np.asarray(img), photometric="rgb",
                             compression="zlib", iccprofile=SRGB_ICC, description=text,
                             metadata=None)
        elif bits == 16:
            tmp.write_bytes(_png16(arr, text))
        elif fmt == "PNG":
            info = PngImagePlugin.PngInfo()
            info.add_text(METADATA_KEY, text)
            img.save(tmp, format="PNG", pnginfo=info, icc_profile=SRGB_ICC)
        else:
            img.save(tmp, format="JPEG", quality=jpeg_quality, comment=text.encode(),
                     icc_profile=SRGB_ICC)
    return dest


def _quantize16(pixels: Tensor) -> np.ndarray:
    """[3, H, W] on the 0-255 scale -> [H, W, 3] uint16 on 0-65535 (65535 / 255 = 257)."""
    x = pixels.detach().double().cpu().clamp(0, 255).mul(257).round()
    return x.to(torch.int32).permute(1, 2, 0).numpy().astype(np.uint16)


def _png16(arr: np.ndarray, text: str) -> bytes:
    """A 48-bit RGB PNG (Pillow writes 16 bits only for greyscale), with an sRGB iCCP chunk
    and the metadata as a text chunk Pillow reads back."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    h, w, _ = arr.shape
    rows = arr.astype(">u2").reshape(h, w * 6 // 2).view(np.uint8).reshape(h, w * 6)
    raw = np.hstack([np.zeros((h, 1), np.uint8), rows]).tobytes()  # filter 0 per row
    return (b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
            + chunk(b"iCCP", b"sRGB\0\0" + zlib.compress(SRGB_ICC))
            + chunk(b"iTXt", METADATA_KEY.encode() + b"\0\0\0\0\0" + text.encode())
            + chunk(b"IDAT", zlib.compress(raw, 6))
            + chunk(b"IEND", b""))
