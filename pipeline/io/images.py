"""Image files in and out: any PIL mode to RGB, resizing by longest side, atomic PNG/JPEG writes."""

from __future__ import annotations

import glob
import hashlib
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, PngImagePlugin, UnidentifiedImageError
from torch import Tensor

from ..errors import InputError
from .files import atomic_path

OUTPUT_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}
METADATA_KEY = "style-pipeline"


@dataclass(frozen=True)
class SizedImage:
    """An image ready for the trunk, and what identifies it in the target cache."""

    pixels: Tensor   # [3, H, W] float32, RGB, 0-255
    digest: str      # sha256 of the source file's bytes (or of an in-memory image's pixels)
    name: str        # for messages

    @property
    def size(self) -> tuple[int, int]:
        return self.pixels.shape[2], self.pixels.shape[1]


def _high_bit_depth_to_rgb(img: Image.Image) -> Image.Image:
    """16/32-bit integer and float images: PIL's convert('RGB') clips them, so rescale first."""
    arr = np.asarray(img, dtype=np.float64)
    if img.mode == "F":
        peak = 1.0 if arr.max(initial=0.0) <= 1.0 else 255.0
    else:  # I;16*, I: 16-bit data unless every value already fits in 8 bits
        peak = 65535.0 if arr.max(initial=0) > 255 else 255.0
    arr8 = np.clip(np.rint(arr * (255.0 / peak)), 0, 255).astype(np.uint8)
    return Image.fromarray(arr8, mode="L").convert("RGB")


def to_rgb(img: Image.Image) -> Image.Image:
    """Any mode to 8-bit RGB; transparency is composited over white."""
    if img.mode.startswith("I") or img.mode == "F":
        return _high_bit_depth_to_rgb(img)
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, img).convert("RGB")
    return img.convert("RGB")


def check_image_file(path: Path) -> None:
    """A one-line InputError unless `path` is a readable regular file (or a link to one)."""
    if path.is_file():
        if not os.access(path, os.R_OK):
            raise InputError(f"{path}: image file is not readable (permission denied)")
        return
    if path.is_symlink():
        raise InputError(f"{path}: broken link (its target {os.readlink(path)} does not exist)")
    if path.is_dir():
        raise InputError(f"{path}: is a folder, not an image file")
    raise InputError(f"{path}: no such image file")


def _decode_error(path: Path, e: Exception) -> InputError:
    # PIL names the BytesIO it was handed (`<_io.BytesIO object at 0x...>`), not the file.
    reason = ("not an image format Pillow can read" if isinstance(e, UnidentifiedImageError)
              else f"{type(e).__name__}: {e}")
    return InputError(f"{path}: cannot decode image ({reason})")


DECODE_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError,
                 Image.DecompressionBombError)


def read_rgb(path: str | os.PathLike) -> tuple[Image.Image, str]:
    """Decode a file fully (so truncation shows up here), honour EXIF orientation; return the
    RGB image and the sha256 of the file's bytes, from one read of the file."""
    path = Path(path)
    check_image_file(path)
    data = path.read_bytes()
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            img = ImageOps.exif_transpose(img)
            rgb = to_rgb(img)
    except DECODE_ERRORS as e:
        raise _decode_error(path, e) from None
    return rgb, hashlib.sha256(data).hexdigest()


def open_rgb(path: str | os.PathLike) -> Image.Image:
    return read_rgb(path)[0]


def header_size(path: str | os.PathLike) -> tuple[int, int]:
    """(w, h) as displayed (EXIF rotation applied), from the header alone: no pixel decode."""
    path = Path(path)
    check_image_file(path)
    try:
        with Image.open(path) as img:
            w, h = img.size
            if img.format == "PNG":  # PNG's getexif() decodes the pixels; its eXIf chunk won't
                exif = Image.Exif()
                if raw := img.info.get("exif"):
                    exif.load(raw)
            else:
                exif = img.getexif()
            orientation = exif.get(0x0112, 1)
    except DECODE_ERRORS as e:
        raise _decode_error(path, e) from None
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def fit_longest_side(size: tuple[int, int], longest: int, bucket: int = 0) -> tuple[int, int]:
    """(w, h) scaled so max(w, h) == longest, aspect ratio kept, each side at least 1.

    With `bucket`, the other side is then rounded to the nearest multiple of it (at most
    `longest`; a side under half a bucket is kept), moving it by at most bucket / 2 pixels.
    Photos of nearly the same shape then get one output size (at 512 px, 3000x2000 gives
    512x341 and 1024x683 gives 512x342; with bucket 8 both give 512x344), and only jobs of
    one size share a batch.
    """
    w, h = size
    scale = longest / max(w, h)
    w, h = max(1, round(w * scale)), max(1, round(h * scale))
    if bucket:
        def snap(side: int) -> int:
            return min(longest, round(side / bucket) * bucket or side)
        w, h = (w, snap(h)) if w >= h else (snap(w), h)
    return w, h


def resize(img: Image.Image, size: tuple[int, int]) -> Image.Image:
    return img if img.size == size else img.resize(size, Image.Resampling.LANCZOS)


def rescale(image: SizedImage, longest: int) -> SizedImage:
    """The same image (and cache identity) with its longest side at `longest`; its pixels are
    8-bit values, so the round trip through PIL is exact."""
    size = fit_longest_side(image.size, longest)
    if size == image.size:
        return image
    return SizedImage(to_tensor(resize(to_image(image.pixels), size)), image.digest, image.name)


def to_tensor(img: Image.Image) -> Tensor:
    """RGB PIL image -> float32 [3, H, W] on the 0-255 scale the trunk expects."""
    return torch.from_numpy(np.asarray(img, dtype=np.float32).copy()).permute(2, 0, 1).contiguous()


def to_image(x: Tensor) -> Image.Image:
    """[3, H, W] on the 0-255 scale -> 8-bit RGB PIL image (clamped, rounded)."""
    arr = x.detach().float().clamp(0, 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(arr, mode="RGB")


def check_output_path(path: str | os.PathLike) -> Path:
    """Fail before any work is done if we cannot write this kind of file."""
    path = Path(path)
    if path.suffix.lower() not in OUTPUT_FORMATS:
        raise InputError(f"{path}: output must end in .png, .jpg or .jpeg")
    return path


def save_image(img: Image.Image, path: str | os.PathLike, metadata: dict | None = None) -> Path:
    """Write PNG or JPEG by extension, atomically, with `metadata` embedded as JSON."""
    path = check_output_path(path)
    fmt = OUTPUT_FORMATS[path.suffix.lower()]
    text = json.dumps(metadata or {}, sort_keys=True, default=str)
    with atomic_path(path) as tmp:
        if fmt == "PNG":
            info = PngImagePlugin.PngInfo()
            info.add_text(METADATA_KEY, text)
            img.save(tmp, format="PNG", pnginfo=info)
        else:
            img.save(tmp, format="JPEG", quality=95, comment=text.encode())
    return path


def intermediate_path(output: Path, iteration: int) -> Path:
    """Where the image after `iteration` iterations goes: beside the output, name.iter0100.png."""
    return output.with_name(f"{output.stem}.iter{iteration:04d}{output.suffix}")


def intermediates(output: Path) -> list[tuple[int, Path]]:
    """The intermediate images written beside `output`, by iteration."""
    found = []
    for path in output.parent.glob(f"{glob.escape(output.stem)}.iter*{output.suffix}"):
        number = path.name[len(output.stem) + len(".iter"):-len(output.suffix)]
        if number.isdigit():
            found.append((int(number), path))
    return sorted(found)


def carries_key(path: Path, key: str) -> bool:
    """`path` is a whole image (it decodes to the end) with `key` embedded: a finished output.
    A truncated file, garbage or another job's output is not."""
    try:
        with Image.open(path) as img:
            img.load()
            return _embedded(img).get("job_key") == key
    except (*DECODE_ERRORS, json.JSONDecodeError):
        return False


def _embedded(img: Image.Image) -> dict:
    raw = img.info.get(METADATA_KEY) or img.info.get("comment")
    if isinstance(raw, bytes):
        raw = raw.decode()
    return json.loads(raw) if raw else {}


def read_metadata(path: str | os.PathLike) -> dict:
    """The parameters we embedded in an output file (empty if none)."""
    with Image.open(path) as img:
        return _embedded(img)
