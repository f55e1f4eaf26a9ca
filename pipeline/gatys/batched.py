"""Products per sample of a batch of independent problems: matrix products and dot products.

On CPU both go one sample at a time: torch's CPU bmm takes a slow batched path for some
shapes (a [1, D] x [D, 1] product, the L-BFGS dot; the relu1_1 Gram backward), while one mm or
dot per sample never is (measured with bench/bench_batch.py). On GPU, one batched kernel.
"""

from __future__ import annotations

import torch
from torch import Tensor


def bmm(a: Tensor, b: Tensor) -> Tensor:
    """[N, P, Q] x [N, Q, R] -> [N, P, R]."""
    if a.device.type != "cpu":
        return torch.bmm(a, b)
    out = a.new_empty(a.shape[0], a.shape[1], b.shape[2])
    for a_i, b_i, out_i in zip(a, b, out, strict=True):
        torch.mm(a_i, b_i, out=out_i)
    return out


def dot(a: Tensor, b: Tensor) -> Tensor:
    """[N, D] x [N, D] -> [N]."""
    if a.device.type != "cpu":
        return torch.linalg.vecdot(a, b)
    return torch.stack([torch.dot(u, v) for u, v in zip(a, b, strict=True)])
