"""The objective and its exact gradient computed block by block, for images whose activations do
not fit in memory (Galerne, Raad, Lezama & Morel, "Scaling Painting Style Transfer", 2024).

The whole-image loss is kept, not approximated: no block is stylized on its own, so there are
no seams and no style drift between blocks. Each feature of each layer belongs to exactly one
block, the one whose *inner* region holds it. The trunk runs on the inner region plus a margin
that covers the receptive field of the deepest layer used, so every feature of the inner
region is computed from the same pixels, with the same zero padding at the image's edges and
the same pooling grid, as in the whole image: inner regions and margins are multiples of the
deepest layer's stride (16 through relu5_1).

Pass 1 (no autograd) adds up the whole-image Gram matrices and content error from every
block's inner features. The style loss is then known, and so is its gradient with respect to
each feature: dL/dF = 4 (G - T) F / (C^3 H W), linear in F once G is fixed. Pass 2 runs each
block again with autograd and back-propagates that gradient (and the content term's) from its
inner features only; the result lands on every pixel of the block's crop, margin included, and
the crops' gradients are summed into the image's. Summing over a partition of the features is
exactly the chain rule of the whole image, so the gradient is the whole-image one up to float
reassociation. TV is pixel-local and cheap: it is taken on the whole image.

Departure from the whole-image path in bf16: the pass-1 Gram partial sums are fp32 GEMMs of
the bf16 features (exact products, fp32 sums), since adding bf16-rounded partial Grams would
lose the residual G - T that losses._GramMSE takes care to keep.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .guides import areas, pixel_weights
from .layers import LAYER_INDEX, LAYER_NAMES, feature_shape, pools_through
from .losses import LossWeights, Targets, gram_backward, pixel_terms, wide
from .vgg import VGG19Trunk

Box = tuple[int, int, int, int]  # y0, y1, x0, x1


@dataclass(frozen=True)
class Grid:
    """Block geometry for a set of layers: every block edge and margin is a multiple of
    `align`, and `margin` pixels on each side cover the receptive field of every layer."""

    align: int
    margin: int

    @classmethod
    def of(cls, layers: tuple[str, ...]) -> Grid:
        # Receptive field of a layer's feature i (stride J): input pixels [J i - left,
        # J i + right]. A 3x3 conv (padding 1) widens it by the stride on each side; a 2x2
        # pool by one stride on the right, then doubles the stride.
        stride, left, right, need_left, need_right = 1, 0, 0, 0, 0
        deepest = max(LAYER_INDEX[name] for name in layers)
        for name in LAYER_NAMES[:deepest + 1]:
            if name.startswith("conv"):
                left, right = left + stride, right + stride
            elif name.startswith("pool"):
                right, stride = right + stride, stride * 2
            if name in layers:
                # An inner region [a, b) aligned to the stride: its last feature reads up to
                # b - stride + right.
                need_left, need_right = max(need_left, left), max(need_right, right - stride + 1)
        align = 2 ** pools_through(LAYER_NAMES[deepest])
        return cls(align, align * math.ceil(max(need_left, need_right) / align))


@dataclass(frozen=True)
class Block:
    """One block: the crop the trunk reads and the inner region whose features it owns, both
    in image pixels."""

    crop: Box
    inner: Box

    def crop_of(self, x: Tensor) -> Tensor:
        y0, y1, x0, x1 = self.crop
        return x[:, :, y0:y1, x0:x1]

    def inner_box(self, layer: str) -> Box:
        """The inner region in the crop's features at `layer`. Exact for the last block too:
        the crop starts on the grid, so floor((H - c) / 2^p) = floor(H / 2^p) - c / 2^p."""
        p = pools_through(layer)
        cy, cx = self.crop[0], self.crop[2]
        y0, y1, x0, x1 = self.inner
        return (y0 - cy) >> p, (y1 - cy) >> p, (x0 - cx) >> p, (x1 - cx) >> p

    def target_box(self, layer: str) -> Box:
        """The inner region in the whole image's features at `layer`."""
        p = pools_through(layer)
        return tuple(v >> p for v in self.inner)  # type: ignore[return-value]


def _edges(length: int, side: int, align: int) -> list[int]:
    """Cut [0, length) into the fewest pieces of at most `side` (a multiple of align), as even
    as the grid allows."""
    units = math.ceil(length / align)
    pieces = math.ceil(units / max(1, side // align))
    return [min(length, round(i * units / pieces) * align) for i in range(pieces + 1)]


def blocks(size: tuple[int, int], side: int, grid: Grid) -> list[Block]:
    """The blocks of an image of `size` (w, h), inner regions at most `side` pixels square."""
    w, h = size
    rows, cols = _edges(h, side, grid.align), _edges(w, side, grid.align)
    out = []
    for y0, y1 in itertools.pairwise(rows):
        for x0, x1 in itertools.pairwise(cols):
            crop = (max(0, y0 - grid.margin), min(h, y1 + grid.margin),
                    max(0, x0 - grid.margin), min(w, x1 + grid.margin))
            out.append(Block(crop, (y0, y1, x0, x1)))
    return out


def _cut(t: Tensor, box: Box) -> Tensor:
    y0, y1, x0, x1 = box
    return t[:, :, y0:y1, x0:x1]


def _count(layer: str, size: tuple[int, int]) -> int:
    """C H W of a layer's features for a whole image of `size` (w, h): what the losses
    normalize by, whichever block a feature came from."""
    return math.prod(feature_shape(layer, size[1], size[0]))


def _inner_gram(features: Tensor, block: Block, layer: str, weights: Tensor | None = None
                ) -> Tensor:
    """F F^T [N, C, C] of the features `block` owns at `layer`, in fp32 (fp64) whatever the
    features' dtype: the blocks' parts of a Gram are summed before it is normalized. With
    the whole image's region `weights` [N, R, h, w] (guides.pixel_weights), each region's
    F diag(w) F^T, [N, R, C, C]."""
    inner = wide(_cut(features, block.inner_box(layer))).flatten(2)
    if weights is None:
        return torch.bmm(inner, inner.transpose(1, 2))
    w = _cut(weights, block.target_box(layer)).flatten(2).to(inner.dtype)
    return torch.stack([torch.bmm(inner * w[:, r, None], inner.transpose(1, 2))
                        for r in range(w.shape[1])], 1)


class _InnerGramGrad(torch.autograd.Function):
    """Back-propagates dL/dF = d F into the inner `box` of a crop's features, zero elsewhere.
    `d` [N, C, C] holds the style loss's whole-image (G - T), scaled; its value is zero, so
    its sum can join the loss being back-propagated. With regions, `d` is [N, R, C, C] and
    `weights` [N, R, h, w] the inner box's region weights: dL/dF = sum_r (d_r F) o w_r."""

    @staticmethod
    def forward(ctx, features: Tensor, d: Tensor, box: Box,  # type: ignore[override]
                weights: Tensor | None) -> Tensor:
        ctx.save_for_backward(features, d, weights)
        ctx.box = box
        return d.new_zeros(features.shape[0])

    @staticmethod
    def backward(ctx, grad: Tensor  # type: ignore[override]
                 ) -> tuple[Tensor, None, None, None]:
        features, d, weights = ctx.saved_tensors
        inner = _cut(features, ctx.box).contiguous(memory_format=_format(features))
        # zeros_like keeps the features' memory format, so autograd adds like layouts.
        out = torch.zeros_like(features)
        d = (d * grad.view(-1, *[1] * (d.dim() - 1))).to(features.dtype)
        if weights is None:
            _cut(out, ctx.box).copy_(gram_backward(inner, d))
        else:
            w = weights.to(features.dtype)
            _cut(out, ctx.box).copy_(sum(gram_backward(inner, d[:, r]) * w[:, r, None]
                                         for r in range(d.shape[1])))
        return out, None, None, None


def _format(t: Tensor) -> torch.memory_format:
    channels_last = t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()
    return torch.channels_last if channels_last else torch.contiguous_format


@dataclass
class BlockObjective:
    """The objective of engine.objective, by blocks: `terms(x)` its per-sample terms (no
    autograd), `gradient(x)` the terms with dL/dx left in x.grad."""

    net: VGG19Trunk
    targets: Targets
    weights: LossWeights
    layout: Callable[[Tensor], Tensor]
    side: int

    @property
    def layers(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys((*self.targets.content, *self.targets.grams)))

    def _blocks(self, x: Tensor) -> list[Block]:
        return blocks((x.shape[3], x.shape[2]), self.side, Grid.of(self.layers))

    def _content(self, feats: dict[str, Tensor], block: Block, size: tuple[int, int],
                 zero: Tensor) -> Tensor:
        """This block's share of the content term: the squared error of its inner features
        over the whole image's feature count."""
        total = zero
        for k, target in self.targets.content.items():
            f = _cut(feats[k], block.inner_box(k))
            t = _cut(target, block.target_box(k))
            total = total + (wide(f) - t).square().flatten(1).sum(1) / _count(k, size)
        return self.weights.content * total

    def _weights(self, layer: str) -> Tensor | None:
        """The region weights of a style layer (guides.pixel_weights); None without masks."""
        guides = self.targets.guides
        return None if guides is None else pixel_weights(guides[layer])

    def _areas(self, layer: str, like: Tensor) -> Tensor:
        """Each region's weight in the style loss, [N, R, 1, 1] (its area; 1 without
        masks, [N, 1, 1])."""
        guides = self.targets.guides
        if guides is None:
            return like.new_ones(like.shape[0], 1, 1)
        return areas(guides[layer]).to(like.dtype)[..., None, None]

    @torch.no_grad()
    def _pass1(self, x: Tensor) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """The terms at x and each style layer's G - T (one per region with masks)."""
        size = (x.shape[3], x.shape[2])
        n = x.shape[0]
        acc = {k: x.new_zeros(t.shape, dtype=wide(x).dtype)
               for k, t in self.targets.grams.items()}
        weights = {k: self._weights(k) for k in acc}
        content = x.new_zeros(n, dtype=wide(x).dtype)
        for block in self._blocks(x):
            feats = self.net(self.layout(block.crop_of(x)), self.layers)
            for k in acc:
                acc[k] += _inner_gram(feats[k], block, k, weights[k])
            content += self._content(feats, block, size, content.new_zeros(n))
        diffs = {k: g.div_(_count(k, size)).sub_(self.targets.grams[k]) for k, g in acc.items()}
        style = sum((w * (self._areas(k, diffs[k]) * diffs[k].square()).mean((-2, -1))
                     .reshape(n, -1).sum(1)
                     for k, w in self.weights.style_layers.items()), content.new_zeros(n))
        terms = {"content": content, "style": self.weights.style * style,
                 **pixel_terms(wide(x), self.targets, self.weights)}
        terms["total"] = sum(terms.values(), content.new_zeros(n))
        return terms, diffs

    def terms(self, x: Tensor) -> dict[str, Tensor]:
        return self._pass1(x.detach())[0]

    def gradient(self, x: Tensor) -> dict[str, Tensor]:
        image = x.detach()
        terms, diffs = self._pass1(image)
        size = (image.shape[3], image.shape[2])
        # dL/dF per style layer, for the whole image's G: 4 w (G - T) / (C^3 H W), and per
        # region 4 w a_r (G_r - T_r) F diag(w_r) / (C^3 H W).
        scales = {k: 4.0 * self.weights.style * w * self._areas(k, diffs[k])
                  / (diffs[k].shape[-1] ** 2 * _count(k, size))
                  for k, w in self.weights.style_layers.items()}
        weights = {k: self._weights(k) for k in scales}
        grad = torch.zeros_like(image)
        for block in self._blocks(image):
            crop = block.crop_of(image).clone().requires_grad_(True)
            feats = self.net(self.layout(crop), self.layers)
            loss = self._content(feats, block, size, terms["total"].new_zeros(len(crop)))
            for k, scale in scales.items():
                w = weights[k]
                loss = loss + _InnerGramGrad.apply(
                    feats[k], diffs[k] * scale, block.inner_box(k),
                    None if w is None else _cut(w, block.target_box(k)))
            loss.sum().backward()
            y0, y1, x0, x1 = block.crop
            grad[:, :, y0:y1, x0:x1] += crop.grad
        pixels = image.clone().requires_grad_(True)
        on_pixels = [t for t in pixel_terms(wide(pixels), self.targets, self.weights).values()
                     if t.requires_grad]
        if on_pixels:  # TV and the temporal term: whole, they are cheap
            sum(on_pixels).sum().backward()
            grad += pixels.grad
        x.grad = grad
        return terms


Features = Callable[[Tensor, tuple[str, ...]], dict[str, Tensor]]


def features_by_blocks(features: Features, image: Tensor, layers: tuple[str, ...], side: int
                       ) -> dict[str, Tensor]:
    """`features(image, layers)` [N, C, h, w] of an image too large to run whole, assembled
    from blocks of at most `side` px (each block's inner features are the whole image's)."""
    out: dict[str, Tensor] = {}
    for block in blocks((image.shape[3], image.shape[2]), side, Grid.of(layers)):
        for k, f in features(block.crop_of(image), layers).items():
            if k not in out:
                c, h, w = feature_shape(k, image.shape[2], image.shape[3])
                out[k] = f.new_empty(f.shape[0], c, h, w)
            _cut(out[k], block.target_box(k)).copy_(_cut(f, block.inner_box(k)))
    return out


def grams_by_blocks(features: Features, image: Tensor, layers: tuple[str, ...], side: int,
                    guides: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
    """losses.gram of each layer's features of an image too large to run whole, summed over
    blocks of at most `side` px; with a region's `guides` [N, h, w] per layer, its
    losses.guided_gram."""
    size = (image.shape[3], image.shape[2])
    weights = {k: pixel_weights(g[:, None]) for k, g in (guides or {}).items()}
    out: dict[str, Tensor] = {}
    for block in blocks(size, side, Grid.of(layers)):
        for k, f in features(block.crop_of(image), layers).items():
            part = _inner_gram(f, block, k, weights.get(k))
            part = part if guides is None else part[:, 0]
            out[k] = out[k] + part if k in out else part
    return {k: g / _count(k, size) for k, g in out.items()}
