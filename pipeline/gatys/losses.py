"""The Gatys objective, per sample: nothing here mixes samples of a batch.

Normalization follows jcjohnson's neural-style (so its tried defaults carry over): content is
the feature MSE; the Gram matrix is F F^T / (C H W) and the style loss is its MSE against the
target; TV is 0.5 * sum of squared neighbour differences. The losses are fp32; the Gram GEMMs
run in the trunk's dtype with an fp32 accumulator (see _GramMSE).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from ..io.tensor_tree import map_tensors
from .batched import bmm
from .guides import areas, pixel_weights
from .temporal import Temporal


def wide(x: Tensor) -> Tensor:
    """`x` in the losses' dtype: fp32, or fp64 when `x` is fp64."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def gram(features: Tensor) -> Tensor:
    """[N, C, H, W] -> [N, C, C] in fp32 (or fp64), normalized by C*H*W."""
    f = _matrix(wide(features))
    # torch.bmm, not batched.bmm: for F F^T the batched CPU path is the faster one.
    return torch.bmm(f, f.transpose(1, 2)).div_(features[0].numel())


def _matrix(features: Tensor) -> Tensor:
    """[N, C, H, W] -> F as [N, C, HW] without a copy: for channels_last, the transposed view of
    its [N, HW, C] rows, which the GEMMs read as is."""
    n, c, h, w = features.shape
    if _rows_last(features):
        return features.permute(0, 2, 3, 1).reshape(n, h * w, c).transpose(1, 2)
    return features.reshape(n, c, h * w)


class _GramMSE(torch.autograd.Function):
    """Per-sample MSE between the Gram of `features` and `target`, with the backward written out.

    The GEMMs run in the features' dtype: with the bf16 trunk, on AMX or tensor cores, about 2x
    the fp32 GEMM rate. That keeps the Gram itself exact to fp32: products of bf16 numbers are
    exact and the accumulation is fp32. Only its output is rounded, and rounding G to bf16 would
    be wrong: near convergence G - T is a small difference of large numbers (an error of 2^-9 of
    G was 12% of G - T in a test). So the target is split, T = T_hi + T_lo with T_hi in bf16; the
    GEMM subtracts T_hi inside its fp32 accumulator (baddbmm with beta = -1), which rounds only
    the residual, and T_lo is subtracted after in fp32. The residual then carries 2^-9 of
    itself, like any bf16 activation. In fp32, T_lo is zero and this is the plain definition.

    Autograd's bmm backward would take two products and a sum of two [N, C, HW] tensors; since
    G - T is symmetric, dL/dF = 4 (G - T) F / (C^3 HW) is one product (in the features' dtype,
    like the rest of the trunk's backward).

    With region weights [N, R, H, W] (guides.py) the R guided Grams F diag(w_r) F^T are one
    GEMM of the stacked weighted features against F, and their gradients one GEMM and a
    weighted sum, rather than R of each and autograd's sums of full-size gradients.
    """

    @staticmethod
    def forward(ctx, features: Tensor, hi: Tensor, lo: Tensor | None,  # type: ignore[override]
                weights: Tensor | None) -> Tensor:
        c = features.shape[1]
        f = _matrix(features)
        left = f if weights is None else _weighted(features, weights)
        diff = torch.baddbmm(hi.reshape(left.shape[0], left.shape[1], c), left, f.transpose(1, 2),
                             beta=-1, alpha=1.0 / features[0].numel())
        diff = wide(diff).view(hi.shape)
        if lo is not None:
            diff.sub_(lo)
        ctx.save_for_backward(features, diff, weights)
        return diff.square().mean((-2, -1))

    @staticmethod
    def backward(ctx, grad: Tensor  # type: ignore[override]
                 ) -> tuple[Tensor, None, None, None]:
        features, diff, weights = ctx.saved_tensors
        c, h, w = features.shape[1:]
        d = (diff * (grad[..., None, None] * (4.0 / (c**3 * h * w)))).to(features.dtype)
        if weights is None:
            return gram_backward(features, d), None, None, None
        return _weighted_gram_backward(features, d, weights), None, None, None


def _weighted(features: Tensor, weights: Tensor) -> Tensor:
    """[F diag(w_1); ...; F diag(w_R)] as [N, R C, HW], laid out as `_matrix` lays out F."""
    n, c, h, w = features.shape
    r = weights.shape[1]
    # Products into a buffer of the shape the GEMM reads: left to itself, the product of
    # broadcast operands may come out in another memory order.
    if _rows_last(features):  # rows [N, HW, R, C], read transposed
        rows = features.new_empty(n, h * w, r, c)
        torch.mul(features.permute(0, 2, 3, 1).reshape(n, h * w, 1, c),
                  weights.permute(0, 2, 3, 1).reshape(n, h * w, r, 1), out=rows)
        return rows.view(n, h * w, r * c).transpose(1, 2)
    cols = features.new_empty(n, r, c, h * w)
    torch.mul(features.reshape(n, 1, c, h * w), weights.reshape(n, r, 1, h * w), out=cols)
    return cols.view(n, r * c, h * w)


def _weighted_gram_backward(features: Tensor, d: Tensor, weights: Tensor) -> Tensor:
    """sum_r w_r (D_r F) in the features' layout, from D [N, R, C, C] (each symmetric)."""
    n, c, h, w = features.shape
    r = weights.shape[1]
    f = _matrix(features)
    if _rows_last(features):  # F^T [D_1 ... D_R]: [N, HW, R, C]
        parts = bmm(f.transpose(1, 2), d.permute(0, 2, 1, 3).reshape(n, c, r * c))
        out = _sum_weighted(parts.view(n, h * w, r, c),
                            weights.permute(0, 2, 3, 1).reshape(n, h * w, r, 1), 2)
        return out.view(n, h, w, c).permute(0, 3, 1, 2)
    parts = bmm(d.reshape(n, r * c, c), f)
    return _sum_weighted(parts.view(n, r, c, h * w), weights.reshape(n, r, 1, h * w), 1
                         ).view(n, c, h, w)


def _sum_weighted(parts: Tensor, weights: Tensor, dim: int) -> Tensor:
    """sum over `dim` of parts * weights, without an R-fold temporary."""
    out = parts.select(dim, 0) * weights.select(dim, 0)
    for i in range(1, parts.shape[dim]):
        out.addcmul_(parts.select(dim, i), weights.select(dim, i))
    return out


def _rows_last(features: Tensor) -> bool:
    """Whether `_matrix` reads `features` as the transposed view of [N, HW, C] rows."""
    channels_last = features.is_contiguous(memory_format=torch.channels_last)
    return channels_last and not features.is_contiguous()


def gram_backward(features: Tensor, d: Tensor) -> Tensor:
    """D F as features [N, C, H, W] in their layout: a Gram loss's gradient, given its
    symmetric dL/dG-derived D [N, C, C] in the features' dtype."""
    n, c, h, w = features.shape
    f = _matrix(features)
    if not _rows_last(features):
        return bmm(d, f).view(n, c, h, w)
    # channels_last: rows of F^T are pixels; (D F)^T = F^T D keeps that layout.
    return bmm(f.transpose(1, 2), d).view(n, h, w, c).permute(0, 3, 1, 2)


@dataclass(frozen=True)
class SplitTarget:
    """A style target as _GramMSE uses it: `hi` in the features' dtype, `lo` = target - hi in
    fp32 (None when `dtype` holds the target exactly). Constant over a run, so the objective
    splits each target once instead of every iteration."""

    target: Tensor
    hi: Tensor
    lo: Tensor | None

    @classmethod
    def of(cls, target: Tensor, dtype: torch.dtype) -> SplitTarget:
        hi = target.to(dtype)
        exact = torch.finfo(dtype).bits >= torch.finfo(target.dtype).bits
        return cls(target, hi, None if exact else target - hi.float())


def gram_mse(features: Tensor, target: Tensor | SplitTarget, guides: Tensor | None = None
             ) -> Tensor:
    """MSE(gram(features), target) per sample: [N, C, H, W], [N, C, C] -> [N]. With `guides`
    [N, R, H, W] (guides.py), the target is [N, R, C, C] and the loss is each region's guided
    Gram's MSE against its own target, weighted by the region's area, summed over regions. A
    target split for another dtype than the features' is split again."""
    if isinstance(target, Tensor):
        target = SplitTarget.of(target, features.dtype)
    elif target.hi.dtype != features.dtype:
        target = SplitTarget.of(target.target, features.dtype)
    if guides is None:
        return _GramMSE.apply(features, target.hi, target.lo, None)
    weights = pixel_weights(guides).to(features.dtype)
    per_region = _GramMSE.apply(features, target.hi, target.lo, weights)
    return (per_region * areas(guides).to(per_region.dtype)).sum(1)


def guided_gram(features: Tensor, guide: Tensor) -> Tensor:
    """The Gram of the features in one region per sample: [N, C, H, W], [N, H, W] -> [N, C, C],
    F diag(v / a) F^T / (C H W) in fp32 (or fp64) (guides.py)."""
    f = _matrix(wide(features))
    weighted = f * pixel_weights(guide.to(f.dtype)).flatten(1)[:, None]
    return torch.bmm(weighted, f.transpose(1, 2)).div_(features[0].numel())


def mse_per_sample(x: Tensor, target: Tensor) -> Tensor:
    """Mean squared error over every dim but the first: [N, ...] -> [N]. A sum, then a
    divide per sample: on channels_last features, flatten copies to NCHW and mean's backward
    writes its gradient NCHW, and either way the content gradient reached the trunk's
    channels_last one on autograd's slow mixed-layout add."""
    return (wide(x) - target).square().sum(tuple(range(1, x.dim()))) / x[0].numel()


def tv_per_sample(x: Tensor) -> Tensor:
    """0.5 * sum of squared horizontal and vertical differences, as neural-style's TVLoss."""
    dx = x[:, :, :-1, 1:] - x[:, :, :-1, :-1]
    dy = x[:, :, 1:, :-1] - x[:, :, :-1, :-1]
    return 0.5 * (dx.square() + dy.square()).flatten(1).sum(1)


@dataclass
class Targets:
    """What the output must match: content features [N, C, H, W] and blended Grams [N, C, C];
    with masks, a Gram per region [N, R, C, C] and each region's guide on each style layer's
    grid, `guides` [N, R, h, w] (guides.py); for a video frame, also the earlier stylized
    frames (temporal.py)."""

    content: dict[str, Tensor]
    grams: dict[str, Tensor]
    temporal: Temporal | None = None
    guides: dict[str, Tensor] | None = None

    def map(self, fn: Callable[[Tensor], Tensor]) -> Targets:
        """`fn` applied to every target tensor (to a device, a batch's rows)."""
        return Targets(*map_tensors(fn, (self.content, self.grams)),
                       None if self.temporal is None else self.temporal.map(fn),
                       None if self.guides is None else map_tensors(fn, self.guides))

    def to(self, device: torch.device) -> Targets:
        return self.map(lambda t: t.to(device))

    def rows(self, lo: int, hi: int) -> Targets:
        """The targets of samples lo..hi."""
        return self.map(lambda t: t[lo:hi])


@dataclass(frozen=True)
class LossWeights:
    content: float
    style: float
    tv: float
    style_layers: dict[str, float]  # layer -> weight (style_weight not included)


def loss_terms(feats: dict[str, Tensor], image: Tensor, targets: Targets, w: LossWeights,
               grams: Mapping[str, Tensor | SplitTarget] | None = None) -> dict[str, Tensor]:
    """Weighted per-sample terms {content, style, tv, total}, and temporal for a video frame,
    each [N]. `grams`: the style targets already split for the features' dtype
    (engine.objective), else targets.grams."""
    n = image.shape[0]
    zero = image.new_zeros(n, dtype=torch.promote_types(image.dtype, torch.float32))
    grams = targets.grams if grams is None else grams
    content = sum((mse_per_sample(feats[k], t) for k, t in targets.content.items()), zero)
    guides = targets.guides or {}
    style = sum((lw * gram_mse(feats[k], grams[k], guides.get(k))
                 for k, lw in w.style_layers.items()), zero)
    terms = {"content": w.content * content, "style": w.style * style,
             **pixel_terms(wide(image), targets, w)}
    terms["total"] = sum(terms.values(), zero)
    return terms


def pixel_terms(image: Tensor, targets: Targets, w: LossWeights) -> dict[str, Tensor]:
    """The terms on the pixels rather than the features: TV, and a video frame's temporal
    term. `image` in the losses' dtype."""
    terms = {"tv": w.tv * tv_per_sample(image) if w.tv > 0
             else image.new_zeros(image.shape[0])}
    if targets.temporal is not None:
        terms["temporal"] = targets.temporal.loss(image)
    return terms
