"""A job's regions (spatial control, guides.py): which style goes where in the content, and
which part of each style image it is drawn from. Each field is one option (options.py) of
`pipeline stylize` and a manifest column. The files are inputs like the images: their bytes,
not their paths, are part of the job key. How regions are used (mask_mode, unmasked) is
StyleParams': a batch shares it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from PIL import ImageColor

from ..errors import InputError
from ..options import as_dict, check, option, result_dict
from .params import StyleParams

# The files are keyed by their bytes (Regions.key), not by their paths.
FILE_KEY = (lambda _: False, "by the file's bytes, not its path")


@dataclass(frozen=True)
class Regions:
    masks: tuple[str, ...] = option((), "Content masks, one per style image and in their "
                                        "order: images of the content's shape, white where "
                                        "that style goes, grey where it goes partly (soft "
                                        "masks blend styles), black where it does not. Colour "
                                        "images are read as their luminance.", key=FILE_KEY)
    style_masks: tuple[str, ...] = option((), "With masks or a segmentation: one mask per "
                                              "style image, white where its style is drawn "
                                              "from (the rest of the painting is ignored). "
                                              "Default: all of each style image.", key=FILE_KEY)
    segmentation: str | None = option(None, "Instead of masks: one colour-coded image of the "
                                            "content's shape, the pixels of the i-th of "
                                            "--colors being the i-th style's region.",
                                      key=FILE_KEY)
    style_segmentations: tuple[str, ...] = option((), "With a segmentation: one colour-coded "
                                                      "image per style image, the pixels of "
                                                      "its style's colour being where it is "
                                                      "drawn from.", key=FILE_KEY)
    colors: tuple[str, ...] = option((), "With a segmentation: one colour per style image "
                                         "(#rrggbb or a CSS name); a pixel within 32 levels "
                                         "per channel of one belongs to its region.")

    @property
    def active(self) -> bool:
        """Whether the job has regions at all."""
        return bool(self.masks) or self.segmentation is not None

    def content_files(self) -> list[str]:
        """The files over the content: its masks, or its segmentation."""
        return list(self.masks) or ([self.segmentation] if self.segmentation else [])

    def files(self) -> list[str]:
        """Every file the regions read."""
        return [*self.masks, *self.style_masks, *([self.segmentation] if self.segmentation
                                                  else []), *self.style_segmentations]

    def rgb_colors(self) -> list[tuple[int, int, int]]:
        out = []
        for c in self.colors:
            try:
                out.append(ImageColor.getrgb(c.strip())[:3])
            except ValueError:
                raise InputError(f"colors: {c!r} is not a colour (#rrggbb or a CSS name)"
                                 ) from None
        return out

    def validate(self, n_styles: int, params: StyleParams) -> Regions:
        """Raise InputError naming the first thing wrong, for a job of `n_styles` styles."""
        check(self)
        given = {"masks": len(self.masks), "style_masks": len(self.style_masks),
                 "style_segmentations": len(self.style_segmentations),
                 "colors": len(self.colors)}
        rules = [
            (not (self.masks and self.segmentation), "give masks or a segmentation, not both"),
            (self.active or not (self.style_masks or self.style_segmentations or self.colors),
             "style masks, style segmentations and colors need masks or a segmentation"),
            (not (self.style_masks and self.style_segmentations),
             "give style masks or style segmentations, not both"),
            (not self.style_segmentations or self.segmentation is not None,
             "style segmentations need a segmentation"),
            (self.segmentation is None or bool(self.colors),
             "a segmentation needs colors, one per style image"),
            (not (self.active and params.style_blend and params.unmasked == "content"),
             "style_weights blend the styles where no mask covers (unmasked=styles); with "
             "masks, a mask's brightness sets its style's strength"),
        ]
        for ok, message in rules:
            if not ok:
                raise InputError(message)
        for name, n in given.items():
            if n and n != n_styles:
                raise InputError(f"{name} has {n} value{'s' * (n != 1)} but there "
                                 f"{'are' if n_styles != 1 else 'is'} {n_styles} style "
                                 f"image{'s' * (n_styles != 1)}: one each")
        self.rgb_colors()
        return self

    def to_dict(self) -> dict[str, Any]:
        return as_dict(self)

    def key(self, digest: Callable[[str], str]) -> dict[str, Any] | None:
        """What the job key holds of the regions: each file's digest (`digest(path)`) and
        the colours; None without regions (the key of a job without them is unchanged)."""
        if not self.active:
            return None
        files = {name: [digest(p) for p in getattr(self, name)]
                 for name in ("masks", "style_masks", "style_segmentations")}
        segmentation = None if self.segmentation is None else digest(self.segmentation)
        return {**files, "segmentation": segmentation, **result_dict(self)}


NO_REGIONS = Regions()
