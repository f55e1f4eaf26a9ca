"""Color preservation as jcjohnson's neural-style -original_colors: the output's luminance with
the content's chrominance, in YUV (post-hoc, so it costs nothing inside the loop)."""

from __future__ import annotations

import torch
from torch import Tensor

_RGB_TO_YUV = torch.tensor([[0.299, 0.587, 0.114],
                            [-0.14713, -0.28886, 0.436],
                            [0.615, -0.51499, -0.10001]])


def _apply(matrix: Tensor, x: Tensor) -> Tensor:
    return torch.einsum("ij,njhw->nihw", matrix.to(x), x)


def preserve_colors(output: Tensor, content: Tensor) -> Tensor:
    """[N, 3, H, W] RGB (0-255) -> same, with Y from `output` and U, V from `content`."""
    yuv_out = _apply(_RGB_TO_YUV, output.float())
    yuv_content = _apply(_RGB_TO_YUV, content.float())
    merged = torch.cat([yuv_out[:, :1], yuv_content[:, 1:]], dim=1)
    return _apply(torch.linalg.inv(_RGB_TO_YUV), merged)
