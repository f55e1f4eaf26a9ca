"""The Gatys objective, per sample: nothing here mixes samples of a batch.

Normalization follows jcjohnson's neural-style (so its tried defaults carry over): content is
the feature MSE; the Gram matrix is F F^T / (C H W) and the style loss is its MSE against the
target; TV is 0.5 * sum of squared neighbour differences. All of it runs in fp32.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .batched import bmm


def gram(features: Tensor) -> Tensor:
    """[N, C, H, W] -> [N, C, C] in fp32, normalized by C*H*W."""
    n, c, h, w = features.shape
    f = features.float().reshape(n, c, h * w)
    # torch.bmm, not batched.bmm: for F F^T the batched CPU path is the faster one (3.1 vs
    # 4.0 ms per image at relu1_1, N = 4).
    return torch.bmm(f, f.transpose(1, 2)).div_(c * h * w)


class _GramMSE(torch.autograd.Function):
    """Per-sample MSE between the Gram of `features` and `target`, in fp32, with the backward
    written out. Autograd's bmm backward takes two products and a sum of two [N, C, HW]
    tensors; since G - T is symmetric, dL/dF = 4 (G - T) F / (C^3 HW) is one product."""

    @staticmethod
    def forward(ctx, features: Tensor, target: Tensor) -> Tensor:  # type: ignore[override]
        diff = gram(features) - target
        ctx.save_for_backward(features, diff)
        return diff.square().mean((1, 2))

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        features, diff = ctx.saved_tensors
        n, c, h, w = features.shape
        # In fp32 like the forward; only the result is rounded to the trunk's dtype (a bf16
        # product measured a slightly worse final objective for no clear gain).
        d = diff * (grad.view(n, 1, 1) * (4.0 / (c**3 * h * w)))
        f = features.float().reshape(n, c, h * w)
        if features.is_contiguous():
            out = bmm(d, f).view(n, c, h, w)
        else:  # channels_last: rows of F^T are pixels; (D F)^T = F^T D keeps that layout.
            out = bmm(f.transpose(1, 2), d).view(n, h, w, c).permute(0, 3, 1, 2)
        return out.to(features.dtype), None


def gram_mse(features: Tensor, target: Tensor) -> Tensor:
    """MSE(gram(features), target) per sample: [N, C, H, W], [N, C, C] -> [N]."""
    return _GramMSE.apply(features, target)


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
    style = sum((lw * gram_mse(feats[k], targets.grams[k])
                 for k, lw in w.style_layers.items()), zero)
    terms = {"content": w.content * content, "style": w.style * style}
    terms["tv"] = w.tv * tv_per_sample(image.float()) if w.tv > 0 else zero
    terms["total"] = terms["content"] + terms["style"] + terms["tv"]
    return terms
