"""Content and style targets, computed once per image and cached, never per iteration.

Features come from ONNX Runtime over the exported trunk (default) or from the PyTorch trunk;
either way they are fp32, and style Grams are taken from them here. The optimization loop only
ever sees the finished `Targets`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..accel.runtime import Runtime
from ..gatys.blockwise import features_by_blocks, grams_by_blocks
from ..gatys.guides import layer_guides, with_rest
from ..gatys.losses import Targets, gram, guided_gram
from ..gatys.params import StyleParams
from ..gatys.vgg import VGG19Trunk
from ..gatys.weights import WeightSet
from ..io.files import cache_dir
from ..io.pixels import SizedImage
from .cache import TargetCache, target_key

FeatureFn = Callable[[Tensor, Sequence[str]], dict[str, Tensor]]


def blend_grams(grams: Sequence[dict[str, Tensor]], blend: Sequence[float]) -> dict[str, Tensor]:
    """Weighted mean of several styles' Grams. With weights summing to 1, matching the mean
    gives the same gradients as summing per-style losses (they differ by a constant), at the
    cost of one Gram comparison instead of one per style."""
    total = float(sum(blend))
    return {k: sum(w / total * g[k] for w, g in zip(blend, grams, strict=True))
            for k in grams[0]}


@dataclass
class TargetBuilder:
    features: FeatureFn
    model: dict[str, str]   # backend, digest, normalization, pooling: part of every cache key
    cache: TargetCache

    def content(self, image: SizedImage, layers: Sequence[str], block: int = 0
                ) -> dict[str, Tensor]:
        """Features [C, h, w] of one content image at `layers`; by blocks of `block` px when
        the image is larger (blockwise.py: the same features)."""
        key = target_key("content", image.digest, image.size, self.model, layers)

        def compute() -> dict[str, Tensor]:
            pixels, names = image.pixels[None], tuple(layers)
            if block and max(image.size) > block:
                return features_by_blocks(self.features, pixels, names, block)
            return self.features(pixels, names)

        return self.cache.get(key, lambda: {k: v[0] for k, v in compute().items()},
                              f"content {image.name} {image.size[0]}x{image.size[1]}",
                              store=image.keep)

    def style(self, image: SizedImage, layers: Sequence[str], block: int = 0,
              mask_mode: str = "inside") -> dict[str, Tensor]:
        """Gram matrices [C, C] of one style image at `layers` (of its region only, if it has
        one: guides.py; its digest names the region and `mask_mode`); by blocks as
        `content`."""
        key = target_key("style", image.digest, image.size, self.model, layers)

        def compute() -> dict[str, Tensor]:
            pixels, names = image.pixels[None], tuple(layers)
            guides = (None if image.regions is None
                      else layer_guides(image.regions, names, mask_mode))
            if block and max(image.size) > block:
                return grams_by_blocks(self.features, pixels, names, block, guides)
            feats = self.features(pixels, names)
            if guides is None:
                return {k: gram(v) for k, v in feats.items()}
            return {k: guided_gram(v, guides[k]) for k, v in feats.items()}

        return self.cache.get(key, lambda: {k: v[0] for k, v in compute().items()},
                              f"style {image.name} {image.size[0]}x{image.size[1]}",
                              store=image.keep)

    def batch(self, contents: Sequence[SizedImage], styles: Sequence[Sequence[SizedImage]],
              params: StyleParams, block: int = 0) -> Targets:
        """Targets of a batch of jobs: job i is contents[i] with styles[i] blended, or with
        regions (the contents' masks), one Gram per style and region; images larger than
        `block` px (if not 0) by blocks."""
        layers = params.style_layers
        blend = params.style_blend or (1.0,) * len(styles[0])
        content = ([self.content(c, params.content_layers, block) for c in contents]
                   if params.content_layers else [])
        content_targets = {k: torch.stack([c[k] for c in content])
                           for k in params.content_layers}
        masked = {c.regions is not None for c in contents}
        if masked == {False}:
            per_job = [blend_grams([self.style(s, layers, block) for s in job], blend)
                       for job in styles]
            return Targets(content_targets,
                           {k: torch.stack([g[k] for g in per_job]) for k in layers})
        if masked != {True}:
            raise ValueError("a batch's jobs all have masks or none does")
        grams, guides = [], []
        for image, job in zip(contents, styles, strict=True):
            assert image.regions is not None
            own = [self.style(s, layers, block, params.mask_mode) for s in job]
            masks = image.regions
            if params.unmasked == "styles":
                own, masks = [*own, blend_grams(own, blend)], with_rest(masks)
            grams.append({k: torch.stack([g[k] for g in own]) for k in layers})
            guides.append(layer_guides(masks, layers, params.mask_mode))
        return Targets(content_targets, {k: torch.stack([g[k] for g in grams]) for k in layers},
                       guides={k: torch.stack([g[k] for g in guides]) for k in layers})


def torch_features(trunk: VGG19Trunk) -> FeatureFn:
    device = next(trunk.parameters()).device

    @torch.no_grad()
    def run(images: Tensor, layers: Sequence[str]) -> dict[str, Tensor]:
        return {k: v.float() for k, v in trunk(images.to(device), layers).items()}

    return run


@functools.lru_cache(maxsize=4)
def builder_for(weights: WeightSet, trunk: VGG19Trunk, pooling: str, runtime: Runtime,
                layers: tuple[str, ...]) -> TargetBuilder:
    """One builder per worker, model and layer set (`layers`: every layer its jobs ask for):
    its session and memo live as long as the process."""
    root = cache_dir(runtime.cache)
    cache = TargetCache(root / "targets" if runtime.cache_targets else None)
    identity = {"normalization": weights.normalization, "pooling": pooling}
    if runtime.targets == "torch":
        return TargetBuilder(torch_features(trunk),
                             {"backend": "torch", "digest": weights.digest, **identity}, cache)
    from .onnx_export import ensure_model
    from .ort_session import create_session

    @functools.cache
    def session() -> FeatureFn:
        """Made for the first target the cache lacks: a job whose targets are all cached
        starts without the model check and the session (most of its set-up)."""
        model, _ = ensure_model(weights, pooling, root / "models", layers)
        return create_session(model, runtime.device, root, runtime.providers, runtime.trt_fp16)

    # Every layer set's model computes the same features of the same weights (each verified
    # against PyTorch), so the cache key names the weights, not one model file.
    return TargetBuilder(lambda images, names: session()(images, names),
                         {"backend": "onnx", "digest": weights.digest, **identity}, cache)
