"""Colour control (Gatys, Ecker, Bethge, Hertzmann & Shechtman, "Controlling Perceptual Factors
in Neural Style Transfer", CVPR 2017): what the style contributes is its texture, not
necessarily its colours. Two ways, both applied to the images before the transfer:

- luminance-only transfer: content and style become their luminance (Y of YUV, in all three
  channels), the style's luminance shifted and scaled to the content's mean and spread (else a
  dark style darkens the result); afterwards the output's luminance is combined with the
  content's chrominance;
- colour histogram matching: the style's pixels x are mapped to A (x - mu_s) + mu_c, which
  gives them the content's mean and covariance, A from the covariances by PCA (symmetric
  square roots, the paper's notebook), Cholesky factors or the symmetric form.

Images are [3, H, W] (or [N, 3, H, W]) RGB on the 0-255 scale; results are not clipped, so
the statistics match exactly (the trunk takes any values).
"""

from __future__ import annotations

import torch
from torch import Tensor

_RGB_TO_YUV = torch.tensor([[0.299, 0.587, 0.114],
                            [-0.14713, -0.28886, 0.436],
                            [0.615, -0.51499, -0.10001]])


def _apply(matrix: Tensor, x: Tensor) -> Tensor:
    return torch.einsum("ij,...jhw->...ihw", matrix.to(x), x)


def luminance(x: Tensor) -> Tensor:
    """Y of each pixel, in all three channels."""
    return _apply(_RGB_TO_YUV[:1], x.float()).expand_as(x).contiguous()


def match_luminance(style: Tensor, content: Tensor) -> Tensor:
    """The style's luminance with the content's luminance mean and standard deviation."""
    s, c = luminance(style), luminance(content)
    return (s - s.mean()) * (c.std() / s.std().clamp_min(1e-6)) + c.mean()


def with_chroma(output: Tensor, content: Tensor) -> Tensor:
    """[N, 3, H, W] -> the output's luminance with the content's chrominance (U, V)."""
    yuv_out = _apply(_RGB_TO_YUV, output.float())
    yuv_content = _apply(_RGB_TO_YUV, content.float())
    merged = torch.cat([yuv_out[:, :1], yuv_content[:, 1:]], dim=1)
    return _apply(torch.linalg.inv(_RGB_TO_YUV), merged)


def _stats(x: Tensor) -> tuple[Tensor, Tensor]:
    """Mean [3, 1] and covariance [3, 3] of an image's pixels, in float64."""
    pixels = x.double().reshape(3, -1)
    mean = pixels.mean(1, keepdim=True)
    centred = pixels - mean
    return mean, centred @ centred.T / pixels.shape[1]


def _sqrt(c: Tensor, power: float = 0.5) -> Tensor:
    """c ** power for a symmetric positive semi-definite matrix (eigenvalues floored)."""
    values, vectors = torch.linalg.eigh(c)
    return vectors @ torch.diag(values.clamp_min(1e-8) ** power) @ vectors.T


def match_colors(style: Tensor, content: Tensor, method: str = "pca") -> Tensor:
    """The style image [3, H, W] recoloured to the content's colour mean and covariance."""
    mu_s, c_s = _stats(style)
    mu_c, c_c = _stats(content)
    eye = 1e-6 * torch.eye(3, dtype=torch.float64)  # a flat (grey) image has a singular one
    c_s, c_c = c_s + eye, c_c + eye
    if method == "cholesky":
        a = torch.linalg.cholesky(c_c) @ torch.linalg.inv(torch.linalg.cholesky(c_s))
    elif method == "pca":
        a = _sqrt(c_c) @ _sqrt(c_s, -0.5)
    elif method == "symmetric":
        root, inv_root = _sqrt(c_s), _sqrt(c_s, -0.5)
        a = inv_root @ _sqrt(root @ c_c @ root) @ inv_root
    else:
        raise ValueError(f"unknown colour matching {method!r}")
    pixels = style.double().reshape(3, -1)
    return (a @ (pixels - mu_s) + mu_c).reshape(style.shape).to(style.dtype)
