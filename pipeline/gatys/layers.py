"""VGG19's layers as the Gatys code names them: their order, and the shape of each one's
output. Kept apart from the trunk (vgg.py) so that parameters and manifests can be checked
without importing torch."""

from __future__ import annotations

from collections.abc import Iterable

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
