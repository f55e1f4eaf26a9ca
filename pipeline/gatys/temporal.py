"""The temporal term of Ruder, Dosovitskiy & Brox (2016), "Artistic style transfer for videos":
a stylized frame should equal the earlier stylized frames warped into it by the optical flow,
wherever the flow can be trusted.

    temporal(x) = gamma * sum_j (1/D) sum_k c_jk (x_k - w_jk)^2,   D = 3 H W,

with w_j the stylized frame i-j warped into frame i and c_j in [0, 1] the consistency
weights: 0 where the forward and backward flows disagree (disocclusions) and on motion
boundaries. Long-term weights tie each pixel to the nearest earlier frame that saw it:
c_j = max(c_j - sum of the nearer frames' c, 0).

Departure: the sum over j is folded into one weighted target before the optimization (a
quadratic sum is one quadratic: C (x - W)^2 plus a constant), so an iteration costs one pixel
term however many frames back it looks; the constant is kept, so the value is the paper's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..io.tensor_tree import map_tensors


def warp(image: Tensor, flow: Tensor) -> Tensor:
    """out(p) = image(p + flow(p)), bilinear, edges repeated: [N, C, H, W] by a flow
    [N, 2, H, W] of (dx, dy) pixels."""
    h, w = image.shape[2:]
    ys, xs = torch.meshgrid(torch.arange(h, dtype=flow.dtype, device=flow.device),
                            torch.arange(w, dtype=flow.dtype, device=flow.device), indexing="ij")
    gx = (xs + flow[:, 0]) * (2 / max(w - 1, 1)) - 1
    gy = (ys + flow[:, 1]) * (2 / max(h - 1, 1)) - 1
    grid = torch.stack([gx, gy], dim=-1).to(image.dtype)
    return F.grid_sample(image, grid, mode="bilinear", padding_mode="border",
                         align_corners=True)


def consistency(back: Tensor, forward: Tensor) -> Tensor:
    """Weights [N, 1, H, W] in {0, 1} for warping frame i-j into frame i. `back`: the flow
    from frame i to i-j (where each pixel of i was), `forward`: from i-j to i. Zero where the
    round trip does not come back (the pixel was hidden in i-j) or on a motion boundary, with
    the thresholds of Ruder et al.'s consistencyChecker."""
    there = warp(forward, back)                       # w~: the forward flow where p came from
    round_trip = (there + back).square().sum(1)
    occluded = round_trip > 0.01 * (there.square().sum(1) + back.square().sum(1)) + 0.5
    dx = F.pad(back[:, :, :, 1:] - back[:, :, :, :-1], (0, 1))
    dy = F.pad(back[:, :, 1:, :] - back[:, :, :-1, :], (0, 0, 0, 1))
    boundary = dx.square().sum(1) + dy.square().sum(1) > 0.01 * back.square().sum(1) + 0.002
    return (~(occluded | boundary)).unsqueeze(1).to(back.dtype)


def nearest_first(weights: Sequence[Tensor]) -> list[Tensor]:
    """Long-term weights, nearest earlier frame first: each pixel counts for the nearest
    frame in which it was visible, c_j = max(c_j - sum of the nearer ones, 0)."""
    out: list[Tensor] = []
    seen = torch.zeros_like(weights[0]) if weights else None
    for c in weights:
        assert seen is not None
        out.append((c - seen).clamp_(min=0))
        seen = seen + out[-1]
    return out


@dataclass
class Temporal:
    """The temporal term folded into one target: `weight` [N, 1, H, W] = gamma * sum_j c_j,
    `image` [N, 3, H, W] = the c-weighted mean of the warped frames, `offset` [N] the constant
    that makes its value the sum over j."""

    image: Tensor
    weight: Tensor
    offset: Tensor

    @classmethod
    def of(cls, warped: Sequence[Tensor], weights: Sequence[Tensor], gamma: float) -> Temporal:
        """From the warped earlier frames and their (nearest-first) weights, nearest first."""
        total = torch.stack(list(weights)).sum(0)
        weighted = torch.stack([c * w for c, w in zip(weights, warped, strict=True)]).sum(0)
        image = weighted / total.clamp(min=1e-12)
        squares = torch.stack([c * w.square() for c, w in zip(weights, warped, strict=True)])
        offset = (squares.sum(0) - total * image.square()).mean((1, 2, 3))
        return cls(image, gamma * total, gamma * offset)

    def loss(self, x: Tensor) -> Tensor:
        """Per-sample gamma * sum_j mean(c_j (x - w_j)^2): [N, 3, H, W] -> [N]."""
        d = x - self.image
        return (self.weight * d.square()).mean((1, 2, 3)) + self.offset

    def map(self, fn: Callable[[Tensor], Tensor]) -> Temporal:
        """`fn` applied to each tensor (to a device, a batch's rows)."""
        return Temporal(*map_tensors(fn, (self.image, self.weight, self.offset)))
