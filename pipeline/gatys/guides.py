"""Spatial control (Gatys, Ecker, Bethge, Hertzmann & Shechtman, "Controlling Perceptual Factors
in Neural Style Transfer", CVPR 2017, section 4): a style term per region, each a Gram matrix of
the features inside the region only.

A region is given as a mask over the image, 1 inside, 0 outside, in between for a soft edge. At
each layer it becomes a guide `v` on that layer's grid (`layer_guides`), and the region's
guided Gram is G = F diag(v) F^T / (C H W a), a = mean(v): for a 0/1 guide, the Gram of the
region's features alone, normalized like a whole image's. The paper multiplies the features by
the guide T before the Gram, (F o T)(F o T)^T, with T scaled so that mean(T^2) = 1; with
T = sqrt(v / a) the two are the same, so a region's pull on a pixel grows with the mask's
brightness there (linearly, not quadratically): complementary soft masks blend two styles
with a total weight of one everywhere. Each region's style term is weighted by its area a, so
the style acts on a pixel with the same strength whether the region is the whole image or a
part of it, and an all-white mask gives exactly the objective without masks.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .layers import LAYER_INDEX, LAYER_NAMES, feature_shape

INSIDE_EXTEND = 3  # positions an eroded guide grows back by (Gatys et al.'s notebook: k=3)


def layer_guides(masks: Tensor, layers: Sequence[str], mode: str) -> dict[str, Tensor]:
    """Masks [..., H, W] in [0, 1] brought to each layer's grid, [..., h, w], as Gatys et al.'s
    three modes: `simple` resizes (area mean); `inside` keeps a position only where all it sees
    is inside the region (a 3x3 min filter at each conv, a 2x2 min at each pool: the region
    eroded by the receptive field), then grows it back by INSIDE_EXTEND positions on the
    layer's grid, never past the resized mask, as their notebook does (k=3): pure erosion
    leaves a seam some 150 px wide at relu5_1 that no region's deep layers style; `all` keeps
    every position that sees any of it (max filters). The image's edges count as inside: the
    convs' zero padding is not another region. A region that erodes to nothing at a deep layer
    (smaller than that layer's receptive field) is resized there instead, so that layer still
    sees its style."""
    lead, (height, width) = masks.shape[:-2], masks.shape[-2:]
    x = masks.reshape(-1, 1, height, width).float()
    wanted = set(layers)

    def shaped(name: str, t: Tensor) -> Tensor:
        return t.reshape(*lead, *t.shape[-2:])

    simple = {k: F.adaptive_avg_pool2d(x, feature_shape(k, height, width)[1:]) for k in wanted}
    if mode == "simple":
        return {k: shaped(k, g) for k, g in simple.items()}
    sign = 1.0 if mode == "all" else -1.0  # a min filter is a max filter of the negation
    y, out = x * sign, {}
    for name in LAYER_NAMES[:max(LAYER_INDEX[k] for k in wanted) + 1]:
        if name.startswith("conv"):
            y = F.max_pool2d(F.pad(y, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
        elif name.startswith("pool"):
            y = F.max_pool2d(y, 2, stride=2)
        if name in wanted:
            guide = y * sign
            if mode == "inside":
                grown = F.max_pool2d(F.pad(guide, (INSIDE_EXTEND,) * 4, mode="replicate"),
                                     2 * INSIDE_EXTEND + 1, stride=1)
                guide = torch.minimum(grown, simple[name])
            kept = guide.amax((2, 3), keepdim=True) > 0
            out[name] = shaped(name, torch.where(kept, guide, simple[name]))
    return out


def areas(guides: Tensor) -> Tensor:
    """Each guide's area a = mean(v): [..., h, w] -> [...]."""
    return guides.mean((-2, -1))


def pixel_weights(guides: Tensor) -> Tensor:
    """v / a, the weight of each position in its region's Gram (0 for an empty region, whose
    term is then 0 at weight a = 0)."""
    a = areas(guides)[..., None, None]
    return torch.where(a > 0, guides / a.clamp_min(torch.finfo(guides.dtype).tiny), 0.0)


def with_rest(masks: Tensor) -> Tensor:
    """Masks [R, H, W] and one more for what none of them covers: 1 - their sum, clipped."""
    return torch.cat([masks, (1 - masks.sum(0, keepdim=True)).clamp_(0, 1)])
