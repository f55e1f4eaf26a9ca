"""The trunk the optimization runs, in the runtime's precision and convolution algorithm."""

from __future__ import annotations

import copy
import functools

import torch
from torch import nn

from ..gatys.vgg import VGG19Trunk
from ..io.files import cache_dir
from .pixel_conv import PixelConv
from .settings import Settings
from .winograd import winograd_trunk


@functools.lru_cache(maxsize=4)
def compute_trunk(trunk: VGG19Trunk, runtime: Settings) -> VGG19Trunk:
    """The trunk the optimization runs: in bf16 mode, a copy with bf16 convolutions. Storing
    bf16 weights (rather than autocast) saves casting all 20M weights on every call: autocast
    caches casts only for weights that require grad. Targets keep using the fp32 trunk.

    conv1_1 reads the fp32 pixels and hands on bf16 features (pixel_conv.py). In fp64 mode,
    an fp64 copy (reference runs). In fp32 on the CPU, Winograd convolutions where the
    runtime has them (winograd.py)."""
    if runtime.precision == "fp32":
        if runtime.winograd == "off":
            return trunk
        return winograd_trunk(trunk, runtime.winograd == "on", cache_dir(runtime.cache))
    if runtime.precision == "fp64":
        return copy.deepcopy(trunk).double()
    # The copy takes each weight in bf16 at once (the memo), without copying it in fp32 first.
    memo: dict[int, object] = {id(p): nn.Parameter(p.to(torch.bfloat16), requires_grad=False)
                               for name, layer in trunk.layers.items() if name != "conv1_1"
                               for p in layer.parameters()}
    low = copy.deepcopy(trunk, memo)
    low.layers["conv1_1"] = PixelConv(low.layers["conv1_1"])
    return low
