"""The VGG19 convolutional trunk with Gatys layer names, truncated at the deepest layer a run needs.

The trunk takes RGB images on a 0-255 scale and applies its weight source's own input
normalization inside `forward`, so the optimizer, the TV weight and the Adam step size mean the
same thing whichever weights are loaded.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .layers import LAYER_INDEX, LAYER_NAMES


class Normalize(nn.Module):
    """Maps RGB 0-255 to a weight source's input space: x[:, perm] * scale - shift, per channel."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], bgr: bool, scale: float):
        super().__init__()
        self.bgr = bgr
        mean_t = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        std_t = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        # y = (x * scale - mean) / std, folded into one multiply-add.
        self.register_buffer("mul", scale / std_t)
        self.register_buffer("add", -mean_t / std_t)

    def forward(self, x: Tensor) -> Tensor:
        if self.bgr:
            x = x.flip(1)
        return torch.addcmul(self.add, x, self.mul)


class VGG19Trunk(nn.Module):
    """VGG19 `features` through `last_layer`, returning the requested activations by name."""

    def __init__(
        self,
        state: dict[str, Tensor],
        normalize: Normalize,
        pooling: str = "max",
        last_layer: str = "relu5_1",
    ):
        super().__init__()
        if pooling not in ("max", "avg"):
            raise ValueError(f"pooling must be 'max' or 'avg', not {pooling!r}")
        self.normalize = normalize
        self.pooling = pooling
        self.layer_names = LAYER_NAMES[: LAYER_INDEX[last_layer] + 1]
        layers: dict[str, nn.Module] = {}
        for name in self.layer_names:
            if name.startswith("conv"):
                weight = state[f"{name}.weight"]
                # Made on the meta device: no random initialization, overwritten at once.
                conv = nn.Conv2d(weight.shape[1], weight.shape[0], 3, padding=1, device="meta")
                conv.weight = nn.Parameter(weight.clone())
                conv.bias = nn.Parameter(state[f"{name}.bias"].clone())
                layers[name] = conv
            elif name.startswith("relu"):
                layers[name] = nn.ReLU(inplace=False)
            else:
                pool = nn.MaxPool2d if pooling == "max" else nn.AvgPool2d
                layers[name] = pool(kernel_size=2, stride=2)
        self.layers = nn.ModuleDict(layers)
        # Max pooling commutes with ReLU: a ReLU whose output only a max pool reads runs after
        # the pool, on a quarter of the pixels, forward and backward (the same numbers).
        self.pooled_first = frozenset(
            name for name, after in itertools.pairwise(self.layer_names)
            if pooling == "max" and name.startswith("relu") and after.startswith("pool"))
        self.requires_grad_(False)
        self.eval()

    def forward(self, image: Tensor, outputs: Sequence[str]) -> dict[str, Tensor]:
        wanted = set(outputs)
        unknown = wanted.difference(self.layer_names)
        if unknown:
            raise ValueError(f"layers {sorted(unknown)} are not in this trunk (ends at "
                             f"{self.layer_names[-1]})")
        deepest = max(LAYER_INDEX[name] for name in wanted)
        feats: dict[str, Tensor] = {}
        x = self.normalize(image)
        relu: nn.Module | None = None
        for name in self.layer_names[: deepest + 1]:
            layer = self.layers[name]
            if isinstance(layer, nn.Conv2d):
                x = x.to(layer.weight.dtype)  # a bf16 trunk reads fp32 pixels
            if name in self.pooled_first and name not in wanted:
                relu = layer
                continue
            x = layer(x)
            if relu is not None:
                x, relu = relu(x), None
            if name in wanted:
                feats[name] = x
        return feats
