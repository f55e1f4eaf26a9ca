"""conv1_1 of the bf16 trunk: fp32 pixels in, bf16 features out, and a bf16 backward.

The forward stays fp32: in bf16 the pixels would be quantized to ~0.5 levels, which
flattens the objective for small L-BFGS steps. Its output is rounded to bf16 like every
other layer's, so relu1_1, its Gram and their backward move half the bytes of fp32.

The backward needs only the gradient to the pixels (the weights are frozen), and it gets a
bf16 gradient, as every layer of the bf16 trunk does. Autograd's fp32 path first cast that
full-size 64-channel gradient to fp32 and then ran oneDNN's fp32 backward-data for three
output channels, several times the bf16 path's cost (bench/bench_layers.py). The bf16 path
rounds the pixel gradient once more (2^-9 relative), which the bf16 quality guard covers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class _PixelConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, conv: PixelConv) -> Tensor:  # type: ignore[override]
        ctx.conv, ctx.input_shape = conv, x.shape
        out = F.conv2d(x, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation,
                       conv.groups)
        return out.to(torch.bfloat16)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        conv = ctx.conv
        grad_x = torch.nn.grad.conv2d_input(ctx.input_shape, conv.low_weight, grad, conv.stride,
                                            conv.padding, conv.dilation, conv.groups)
        return grad_x.float(), None


class PixelConv(nn.Conv2d):
    """`conv` (fp32, zero padding; its parameters shared) with a bf16 output and backward."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                         conv.padding, conv.dilation, conv.groups, conv.bias is not None,
                         device="meta")
        self.weight, self.bias = conv.weight, conv.bias
        self.register_buffer("low_weight", conv.weight.detach().to(torch.bfloat16))

    def forward(self, x: Tensor) -> Tensor:
        return _PixelConv.apply(x, self)
