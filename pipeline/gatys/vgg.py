"""The VGG19 convolutional trunk with Gatys layer names, truncated at the deepest layer a run needs.

The trunk takes RGB images on a 0-255 scale and applies its weight source's own input
normalization inside `forward`, so the optimizer, the TV weight and the Adam step size mean the
same thing whichever weights are loaded.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, nn

# (block, number of convs) for VGG19.
_BLOCKS = ((1, 2), (2, 2), (3, 4), (4, 4), (5, 4))

CONV_NAMES: tuple[str, ...] = tuple(f"conv{b}_{i}" for b, n in _BLOCKS for i in range(1, n + 1))


def _layer_names() -> tuple[str, ...]:
    names: list[str] = []
    for b, n in _BLOCKS:
        for i in range(1, n + 1):
            names += [f"conv{b}_{i}", f"relu{b}_{i}"]
        names.append(f"pool{b}")
    return tuple(names)


LAYER_NAMES: tuple[str, ...] = _layer_names()
LAYER_INDEX = {name: i for i, name in enumerate(LAYER_NAMES)}

CONTENT_LAYERS: tuple[str, ...] = ("relu4_2",)
STYLE_LAYERS: tuple[str, ...] = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")


CHANNELS_OF_BLOCK = {1: 64, 2: 128, 3: 256, 4: 512, 5: 512}


def in_order(layers: Iterable[str]) -> tuple[str, ...]:
    """Distinct layer names, shallowest first."""
    return tuple(sorted(set(layers), key=LAYER_INDEX.__getitem__))


def pools_through(name: str) -> int:
    """How many 2x2 poolings lie before a layer, itself included: its stride is 2 ** that."""
    return sum(1 for n in LAYER_NAMES[:LAYER_INDEX[name] + 1] if n.startswith("pool"))


def feature_shape(name: str, height: int, width: int) -> tuple[int, int, int]:
    """(C, H, W) of a layer's output for an input of height x width: one floor-halving per
    pool up to and including it."""
    pools = pools_through(name)
    block = int(next(c for c in name if c.isdigit()))  # conv4_2, relu4_2, pool4: block 4
    return CHANNELS_OF_BLOCK[block], height >> pools, width >> pools


def min_input_side(layers: Iterable[str]) -> int:
    """Smallest input side that leaves every requested layer at least 1x1 (one halving per pool)."""
    deepest = max(LAYER_INDEX[name] for name in layers)
    pools = sum(1 for name in LAYER_NAMES[:deepest] if name.startswith("pool"))
    return 2**pools


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
        for name in self.layer_names[: deepest + 1]:
            layer = self.layers[name]
            if isinstance(layer, nn.Conv2d):
                x = x.to(layer.weight.dtype)  # a bf16 trunk reads fp32 pixels
            x = layer(x)
            if name in wanted:
                feats[name] = x
        return feats
