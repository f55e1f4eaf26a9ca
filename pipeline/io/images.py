"""Image files in and out, without torch: any PIL mode to sRGB RGB (embedded ICC profiles
converted), resizing by longest side, the output formats (PNG/JPEG/TIFF in 8 or 16 bits per
channel, tagged sRGB) and the metadata embedded in outputs. Tensors to and from images, and
their atomic writes, are pixels.py's."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

from ..errors import InputError
from .fetch import FETCH_THREADS, Version, local_copy, reading, reading_url
from .files import file_digest
from .storage import Location, is_url, name, parent

OUTPUT_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".tif": "TIFF",
                  ".tiff": "TIFF"}
METADATA_KEY = "style-pipeline"
JPEG_QUALITY = 95  # Pillow's scale: above 95 the file grows much for little
# A mask whose aspect ratio is off by more than this is another picture's, not this one's.
ASPECT_TOLERANCE = 0.01


def _srgb_icc() -> bytes:
    """LittleCMS's sRGB profile with its creation date and profile ID cleared: the same bytes
    in every process, so one job's output is the same file whenever it is made."""
    data = bytearray(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())
    data[24:36] = bytes(12)   # header: date and time created
    data[84:100] = bytes(16)  # header: profile ID (zero: not computed)
    return bytes(data)


SRGB_ICC = _srgb_icc()
SRGB = ImageCms.ImageCmsProfile(io.BytesIO(SRGB_ICC))
log = logging.getLogger("pipeline.images")


def _high_bit_depth_to_rgb(img: Image.Image) -> Image.Image:
    """16/32-bit integer and float images: PIL's convert('RGB') clips them, so rescale first."""
    arr = np.asarray(img, dtype=np.float64)
    if img.mode == "F":
        peak = 1.0 if arr.max(initial=0.0) <= 1.0 else 255.0
    else:  # I;16*, I: 16-bit data unless every value already fits in 8 bits
        peak = 65535.0 if arr.max(initial=0) > 255 else 255.0
    arr8 = np.clip(np.rint(arr * (255.0 / peak)), 0, 255).astype(np.uint8)
    return Image.fromarray(arr8, mode="L").convert("RGB")


def to_srgb(img: Image.Image, name: str) -> Image.Image:
    """An image with an embedded ICC profile (Adobe RGB, Display P3, a CMYK press profile...)
    converted to sRGB, the space the trunk's weights and our outputs assume. A profile that
    cannot be used is said and ignored."""
    icc = img.info.get("icc_profile")
    modes = {"RGB": "RGB", "RGBA": "RGBA", "CMYK": "RGB", "L": "RGB"}
    if not icc or img.mode not in modes:
        return img
    try:
        profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        if ImageCms.getProfileDescription(profile).strip().startswith("sRGB"):
            return img
        return ImageCms.profileToProfile(img, profile, SRGB, outputMode=modes[img.mode])
    except (ImageCms.PyCMSError, OSError, ValueError) as e:
        log.warning("%s: its ICC profile was ignored (%s)", name, e)
        return img


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


def check_image_file(path: Location) -> None:
    """A one-line InputError unless `path` is a readable regular file (or a link to one), or
    an object in storage (fetched: its local copy is read next)."""
    if isinstance(path, str):
        local_copy(path)
        return
    if path.is_file():
        if not os.access(path, os.R_OK):
            raise InputError(f"{path}: image file is not readable (permission denied)")
        return
    if path.is_symlink():
        raise InputError(f"{path}: broken link (its target {os.readlink(path)} does not exist)")
    if path.is_dir():
        raise InputError(f"{path}: is a folder, not an image file")
    raise InputError(f"{path}: no such image file")


# The files a folder or a prefix gives as images (bulk/build.py), and that are no video.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"})


def _decode_error(path: Location, e: Exception) -> InputError:
    # PIL names the BytesIO it was handed (`<_io.BytesIO object at 0x...>`), not the file.
    reason = ("not an image format Pillow can read" if isinstance(e, UnidentifiedImageError)
              else f"{type(e).__name__}: {e}")
    return InputError(f"{path}: cannot decode image ({reason})")


DECODE_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError,
                 Image.DecompressionBombError)


# A JPEG much larger than the size it is resized to is decoded at a reduced DCT scale (1/2,
# 1/4 or 1/8 of its side: libjpeg skips most of the work) no smaller than DRAFT_MARGIN times
# that size, then resized as any image. At twice the size a detailed photo's result differed
# from a full decode's by up to 23 levels of 255; at four times by 1-2 on a phone-sized photo
# and under 15 on a finely textured painting (mean under one level), and a 5176x3464 photo
# for a 512 px job still decodes about three times faster (targets/cache.py's RESAMPLE names
# this decoding).
DRAFT_MARGIN = 4


def read_rgb(path: str | os.PathLike | Version) -> tuple[Image.Image, str]:
    """Decode a file (or an object at a URL, storage.py, or of a version just asked)
    fully (so truncation shows up here), honour EXIF orientation; return the RGB image and
    the sha256 of the file's bytes, from one read of the file."""
    img, digest, _ = read_rgb_for(path, 0)
    return img, digest


def read_rgb_for(path: str | os.PathLike | Version, longest: int
                 ) -> tuple[Image.Image, str, tuple[int, int]]:
    """read_rgb for an image to be resized to `longest` px on its longest side (0: kept at
    its size): a large JPEG comes at a reduced scale of at least DRAFT_MARGIN x that; also
    its size as given (EXIF orientation applied)."""
    if isinstance(path, Version):
        with reading(path) as copy:
            data = copy.read_bytes()
        path = path.url
    elif is_url(path):
        with reading_url(str(path)) as copy:
            data = copy.read_bytes()
    else:
        path = Path(path)
        check_image_file(path)
        data = path.read_bytes()
    try:
        with Image.open(io.BytesIO(data)) as img:
            given = img.size
            if longest and max(given) > DRAFT_MARGIN * longest:
                scale = DRAFT_MARGIN * longest / max(given)
                img.draft(None, (max(1, round(given[0] * scale)), max(1, round(given[1] * scale))))
            img.load()
            stored = img.size
            img = ImageOps.exif_transpose(img)
            if img.size != stored:  # turned a quarter
                given = given[::-1]
            rgb = to_rgb(to_srgb(img, str(path)))
    except DECODE_ERRORS as e:
        raise _decode_error(path, e) from None
    return rgb, hashlib.sha256(data).hexdigest(), given


def open_rgb(path: str | os.PathLike) -> Image.Image:
    return read_rgb(path)[0]


def header_size(path: str | os.PathLike) -> tuple[int, int]:
    """(w, h) as displayed (EXIF rotation applied), from the header alone: no pixel decode
    (of an object in storage: of its local copy, io/fetch.py)."""
    if is_url(path):
        with reading_url(str(path)) as copy:
            return displayed_size(copy, str(path))
    check_image_file(path := Path(path))
    return displayed_size(path, path)


def displayed_size(source: Path, path: Location) -> tuple[int, int]:
    """header_size of the file `source`, whose errors name `path` (the object it copies)."""
    try:
        with Image.open(source) as img:
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


def nameless(path: Path) -> bool:
    """`.png`: a hidden file without an extension, not an image named by its extension."""
    return path.name.startswith(".") and not path.suffix


def check_output_path(path: str | os.PathLike, bit_depth: int = 0) -> Path:
    """Fail before any work is done if we cannot write this kind of file."""
    shown, path = path, Path(name(str(path)) if is_url(path) else path)
    if nameless(path):
        raise InputError(f"{shown}: output has no name before its extension")
    if path.suffix.lower() not in OUTPUT_FORMATS:
        raise InputError(f"{shown}: output must end in .png, .jpg, .jpeg, .tif or .tiff")
    output_bit_depth(path, bit_depth)
    return path


def output_bit_depth(path: Path, requested: int = 0) -> int:
    """Bits per channel an output gets: `requested`, or (0) 16 for TIFF and 8 otherwise."""
    fmt = OUTPUT_FORMATS.get(path.suffix.lower())
    if requested == 16 and fmt == "JPEG":
        raise InputError(f"{path}: JPEG holds 8 bits per channel; use .png or .tif for 16")
    return requested or (16 if fmt == "TIFF" else 8)


def intermediate_path(output: Path | str, iteration: int) -> Path | str:
    """Where the image after `iteration` iterations goes: beside the output, name.iter0100.png
    (beside an output in object storage, at its URL)."""
    if isinstance(output, str):
        stem = Path(name(output))
        return f"{parent(output)}/{stem.stem}.iter{iteration:04d}{stem.suffix}"
    return output.with_name(f"{output.stem}.iter{iteration:04d}{output.suffix}")


_INTERMEDIATE = re.compile(r"(.+)\.iter(\d+)(\.[^.]+)")  # stem, iteration, suffix


def intermediates_beside(outputs: Iterable[tuple[Path, str | None]],
                         names: Callable[[Path], Iterable[str]] | None = None,
                         carries: Callable[[Path, str], bool] | None = None
                         ) -> dict[Path, list[tuple[int, Path]]]:
    """The intermediate images written beside each output, by iteration; with its key, only
    those of that job (an earlier job with the same output name may have left others there).
    Each folder is listed once (`names`, default os.listdir): a run's outputs share a few
    folders, and a listing per output made a report of N jobs in one folder cost N^2.
    `carries(path, key)` tells a job's own (default: the key in its header), many at once:
    in a bucket, a check may have to fetch the image."""
    keys = dict(outputs)
    wanted = {(o.parent, o.stem, o.suffix): o for o in keys}
    candidates: list[tuple[Path, int, Path]] = []
    for folder in {o.parent for o in keys}:
        try:
            listed = set((names or os.listdir)(folder))
        except OSError:  # no folder, no intermediates
            continue
        for entry in listed:
            match = _INTERMEDIATE.fullmatch(entry)
            if match and (output := wanted.get((folder, match[1], match[3]))):
                candidates.append((output, int(match[2]), folder / entry))
    check = carries or (lambda path, key: header_key(path) == key)
    with ThreadPoolExecutor(FETCH_THREADS) as pool:
        own = list(pool.map(lambda c: keys[c[0]] is None or check(c[2], keys[c[0]]),
                            candidates))
    found: dict[Path, list[tuple[int, Path]]] = {o: [] for o in keys}
    for (output, iteration, path), ok in zip(candidates, own, strict=True):
        if ok:
            found[output].append((iteration, path))
    return {o: sorted(f) for o, f in found.items()}


def header_key(path: Path) -> str | None:
    """The job key embedded in an image's header (no pixels decoded)."""
    try:
        return read_metadata(path).get("job_key")
    except (*DECODE_ERRORS, json.JSONDecodeError):
        return None


def carries_key(path: Path, key: str) -> bool:
    """`path` is a whole image (it decodes to the end) with `key` embedded: a finished output.
    A truncated file, garbage or another job's output is not."""
    return open_keyed(path, key) is not None


def open_keyed(path: Path, key: str) -> tuple[Image.Image, dict] | None:
    """The image at `path`, decoded whole, and what we embedded in it, when that carries
    `key`; else None (carries_key's test, in one decode)."""
    try:
        with Image.open(path) as img:
            img.load()
            embedded = _embedded(img)
            return (img.copy(), embedded) if embedded.get("job_key") == key else None
    except (*DECODE_ERRORS, json.JSONDecodeError):
        return None


def _embedded(img: Image.Image) -> dict:
    raw = img.info.get(METADATA_KEY) or img.info.get("comment")
    if raw is None and hasattr(img, "tag_v2"):  # TIFF: the ImageDescription tag
        raw = img.tag_v2.get(270)
    if isinstance(raw, bytes):
        raw = raw.decode()
    return json.loads(raw) if raw else {}


def read_metadata(path: str | os.PathLike) -> dict:
    """The parameters we embedded in an output file (empty if none)."""
    with Image.open(path) as img:
        return _embedded(img)


def check_shape(path: str | os.PathLike, size: tuple[int, int], like: tuple[int, int],
                role: str) -> float:
    """InputError unless a mask of `size` (w, h) has the aspect ratio of its image's `like`
    within ASPECT_TOLERANCE; returns how far off it is."""
    (w, h), (cw, ch) = size, like
    off = abs(w * ch - h * cw) / (h * cw)
    if off > ASPECT_TOLERANCE:
        raise InputError(f"{path}: {role} {w}x{h} is not the shape of its image {cw}x{ch} "
                         f"(aspect ratios differ by {off:.1%}); give it the image's shape")
    return off


def image_digest(source: object) -> str:
    """sha256 of a file's bytes, or of a PIL image's mode, size and pixels."""
    if isinstance(source, Image.Image):
        h = hashlib.sha256(f"{source.mode}{source.size}".encode())
        h.update(source.tobytes())
        return h.hexdigest()
    if is_url(source):  # of its local copy, which reading the image made already
        with reading_url(str(source)) as copy:
            return file_digest(copy)
    return file_digest(Path(str(source)))
