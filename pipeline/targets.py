"""Content and style targets from the PyTorch trunk, computed once per job (never per iteration)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .losses import Targets, gram
from .vgg import VGG19Trunk


@torch.no_grad()
def features(trunk: VGG19Trunk, images: Tensor, layers: Sequence[str]) -> dict[str, Tensor]:
    """fp32 activations of [N, 3, H, W] images (0-255 RGB) at `layers`."""
    return {k: v.float() for k, v in trunk(images, layers).items()}


@torch.no_grad()
def style_grams(trunk: VGG19Trunk, image: Tensor, layers: Sequence[str]) -> dict[str, Tensor]:
    """Gram matrices [C, C] of one style image [1, 3, h, w] at `layers`."""
    return {k: gram(v)[0] for k, v in trunk(image, layers).items()}


def blend_grams(grams: Sequence[dict[str, Tensor]], blend: Sequence[float]) -> dict[str, Tensor]:
    """Weighted mean of several styles' Grams. With weights summing to 1, matching the mean
    gives the same gradients as summing per-style losses (they differ by a constant), at the
    cost of one Gram comparison instead of one per style."""
    total = float(sum(blend))
    return {k: sum(w / total * g[k] for w, g in zip(blend, grams, strict=True))
            for k in grams[0]}


def torch_targets(trunk: VGG19Trunk, contents: Tensor, styles: Sequence[Sequence[Tensor]],
                  blends: Sequence[Sequence[float]], content_layers: Sequence[str],
                  style_layers: Sequence[str]) -> Targets:
    """Targets for a batch: contents [N, 3, H, W]; styles[i] are job i's style images."""
    content = features(trunk, contents, content_layers) if content_layers else {}
    per_job = [blend_grams([style_grams(trunk, s[None], style_layers) for s in job_styles], blend)
               for job_styles, blend in zip(styles, blends, strict=True)]
    grams = {k: torch.stack([g[k] for g in per_job]) for k in style_layers}
    return Targets(content, grams)
