"""The optimization: from an initial batch of images and their targets to stylized images.

Reads top to bottom as Gatys et al. (2016): the image is the variable, the VGG19 trunk gives
its features, the loss compares them with fixed targets, and an optimizer (L-BFGS by default,
as in the paper) updates the pixels. Departures from the paper: loss normalization follows
neural-style (see losses.py), a batch of independent jobs is optimized at once, and the trunk
may run in bf16 while Grams and losses stay fp32.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .lbfgs import BatchedLBFGS
from .losses import LossWeights, Targets, loss_terms
from .params import StyleParams
from .runtime import Runtime
from .vgg import LAYER_INDEX, VGG19Trunk
from .weights import WeightSet, load_weights

Progress = Callable[[int, dict[str, Tensor]], None]


class Interrupted(Exception):
    """The run was asked to stop; a checkpoint of the current iteration was saved."""


@dataclass
class Checkpointing:
    """Resumable optimization: `save(iteration, images, optimizer_state)` runs every `every`
    iterations and when `stop()` turns true (then Interrupted is raised); `resume` restarts
    from a saved (iteration, images, optimizer_state)."""

    save: Callable[[int, Tensor, dict[str, Any]], None]
    every: int = 0
    resume: tuple[int, Tensor, dict[str, Any]] | None = None
    stop: Callable[[], bool] = lambda: False


@functools.lru_cache(maxsize=4)
def load_trunk(source: str, pooling: str, last_layer: str, runtime: Runtime
               ) -> tuple[VGG19Trunk, WeightSet]:
    """The frozen trunk on the runtime's device; cached so a worker loads weights once."""
    weights = load_weights(source)
    trunk = weights.trunk(pooling=pooling, last_layer=last_layer).to(runtime.device)
    if runtime.channels_last:
        trunk = trunk.to(memory_format=torch.channels_last)
    return trunk, weights


def trunk_for(params: StyleParams, runtime: Runtime) -> tuple[VGG19Trunk, WeightSet]:
    last = max(params.layers, key=LAYER_INDEX.__getitem__)
    return load_trunk(params.weights, params.pooling, last, runtime)


def loss_weights(params: StyleParams) -> LossWeights:
    layer_w = params.style_layer_weights or (1.0,) * len(params.style_layers)
    return LossWeights(params.content_weight, params.style_weight, params.tv_weight,
                       dict(zip(params.style_layers, layer_w, strict=True)))


def init_batch(params: StyleParams, contents: Tensor, init_image: Tensor | None) -> Tensor:
    """The starting images: the content, seeded uniform noise, or a given image."""
    if params.init == "content":
        return contents.clone()
    if params.init == "noise":
        # Reseeded per sample: a job's start does not depend on its place in the batch.
        gen = torch.Generator()
        noise = [torch.rand(contents.shape[1:], generator=gen.manual_seed(params.seed)) * 255
                 for _ in range(contents.shape[0])]
        return torch.stack(noise).to(contents.device)
    assert init_image is not None, "init image path given but no image loaded"
    return init_image.expand_as(contents).clone()


def objective(trunk: VGG19Trunk, targets: Targets, params: StyleParams, runtime: Runtime
              ) -> Callable[[Tensor], dict[str, Tensor]]:
    """Per-sample loss terms of a batch of images: the trunk under the runtime's precision,
    Grams and losses in fp32."""
    weights = loss_weights(params)
    layers = params.layers

    def evaluate(x: Tensor) -> dict[str, Tensor]:
        with runtime.autocast():
            feats = trunk(runtime.layout(x), layers)
        with runtime.fp32():
            return loss_terms(feats, x, targets, weights)

    return evaluate


def optimize(trunk: VGG19Trunk, x0: Tensor, targets: Targets, params: StyleParams,
             runtime: Runtime, progress: Progress | None = None,
             checkpointing: Checkpointing | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """Run `params.iterations` evaluations from x0 [N, 3, H, W] (or from a checkpoint); return
    the final images and the per-sample loss terms of the last evaluation."""
    evaluate = objective(trunk, targets, params, runtime)
    resume = checkpointing.resume if checkpointing is not None else None
    start, x0, opt_state = resume if resume is not None else (0, x0, None)
    x = x0.detach().clone().to(runtime.device).requires_grad_(True)
    if params.optimizer == "lbfgs":
        opt: Any = BatchedLBFGS(x, lr=params.step_size, history=params.lbfgs_history,
                                max_step=params.lbfgs_max_step or None)
    else:
        # Adam is elementwise, so it is already exact for a batch of independent jobs.
        opt = torch.optim.Adam([x], lr=params.step_size)
    if opt_state is not None:
        opt.load_state_dict(tree_to(opt_state, runtime.device))

    def closure() -> dict[str, Tensor]:
        x.grad = None
        terms = evaluate(x)
        terms["total"].sum().backward()
        return {k: v.detach() for k, v in terms.items()}

    terms: dict[str, Tensor] = {}
    for i in range(start, params.iterations):
        terms = opt.step(closure)
        if params.optimizer == "adam":
            with torch.no_grad():
                x.clamp_(0, 255)  # box constraint; L-BFGS is left unclamped, as in neural-style
        if progress is not None:
            progress(i + 1, terms)
        if checkpointing is not None and i + 1 < params.iterations:
            stopping = checkpointing.stop()
            if stopping or (checkpointing.every and (i + 1) % checkpointing.every == 0):
                checkpointing.save(i + 1, x.detach(), opt.state_dict())
            if stopping:
                raise Interrupted(f"stopped at iteration {i + 1}")
    if not terms:  # zero iterations: report the objective at the start
        with torch.no_grad():
            terms = evaluate(x)
    return x.detach(), terms


def tree_to(state: Any, device: torch.device | str) -> Any:
    """Move every tensor in a (nested) optimizer state to `device`."""
    if isinstance(state, Tensor):
        return state.detach().to(device)
    if isinstance(state, dict):
        return {k: tree_to(v, device) for k, v in state.items()}
    if isinstance(state, list | tuple):
        return type(state)(tree_to(v, device) for v in state)
    return state
