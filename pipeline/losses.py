"""The Gatys objective, per sample: nothing here mixes samples of a batch.

Normalization follows jcjohnson's neural-style (so its tried defaults carry over): content is
the feature MSE; the Gram matrix is F F^T / (C H W) and the style loss is its MSE against the
target; TV is 0.5 * sum of squared neighbour differences. All of it runs in fp32.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


def gram(features: Tensor) -> Tensor:
    """[N, C, H, W] -> [N, C, C] in fp32, normalized by C*H*W."""
    n, c, h, w = features.shape
    f = features.float().reshape(n, c, h * w)
    return torch.bmm(f, f.transpose(1, 2)).div_(c * h * w)


def mse_per_sample(x: Tensor, target: Tensor) -> Tensor:
    """Mean squared error over every dim but the first: [N, ...] -> [N]."""
    return (x.float() - target).square().flatten(1).mean(1)


def tv_per_sample(x: Tensor) -> Tensor:
    """0.5 * sum of squared horizontal and vertical differences, as neural-style's TVLoss."""
    dx = x[:, :, :-1, 1:] - x[:, :, :-1, :-1]
    dy = x[:, :, 1:, :-1] - x[:, :, :-1, :-1]
    return 0.5 * (dx.square() + dy.square()).flatten(1).sum(1)


@dataclass
class Targets:
    """What the output must match: content features [N, C, H, W] and blended Grams [N, C, C]."""

    content: dict[str, Tensor]
    grams: dict[str, Tensor]

    def to(self, device: torch.device) -> Targets:
        return Targets({k: v.to(device) for k, v in self.content.items()},
                       {k: v.to(device) for k, v in self.grams.items()})


@dataclass(frozen=True)
class LossWeights:
    content: float
    style: float
    tv: float
    style_layers: dict[str, float]  # layer -> weight (style_weight not included)


def loss_terms(feats: dict[str, Tensor], image: Tensor, targets: Targets,
               w: LossWeights) -> dict[str, Tensor]:
    """Weighted per-sample terms {content, style, tv, total}, each [N]."""
    n = image.shape[0]
    zero = image.new_zeros(n, dtype=torch.float32)
    content = sum((mse_per_sample(feats[k], t) for k, t in targets.content.items()), zero)
    style = sum((lw * mse_per_sample(gram(feats[k]), targets.grams[k])
                 for k, lw in w.style_layers.items()), zero)
    terms = {"content": w.content * content, "style": w.style * style}
    terms["tv"] = w.tv * tv_per_sample(image.float()) if w.tv > 0 else zero
    terms["total"] = terms["content"] + terms["style"] + terms["tv"]
    return terms
