"""A spectral preconditioner for L-BFGS on images: low spatial frequencies take longer steps.

L-BFGS starts every direction from H0 = gamma I, and with 100 pairs in a space of 10^5-10^6
pixels, H0 is what most of the space sees. The objective's curvature is far from flat across
frequencies (VGG's first layers and the TV term react most to fine detail), so a flat H0
moves the broad structures of the image slowly. Optimizing z with x = x0 + P z, where P scales
each spatial frequency f (cycles per pixel) by (0.5 / max(f, F_MIN))^alpha, is L-BFGS with
H0 = gamma P^2: detail at the Nyquist frequency keeps its step, a period of 100 px or more
gets 7x it at alpha 0.5. The same idea as the Fourier parametrization of feature
visualization (Olah et al. 2017), used here as a preconditioner of a quasi-Newton method.
P is symmetric positive definite (a real, even filter), so the method stays L-BFGS.
"""

from __future__ import annotations

import torch
from torch import Tensor

# Frequencies below this (cycles per pixel: a 100 px period) get no larger step: a longer
# period would let the image's mean drift in a few steps.
F_MIN = 0.01


class Spectral:
    """P for images of `shape` [N, C, H, W], acting on them flattened to [N, C*H*W], and its
    inverse (what a projected step took, in z: lbfgs.py's bounds)."""

    def __init__(self, shape: tuple[int, ...], alpha: float, device: torch.device):
        self.shape = shape
        h, w = shape[2:]
        fy = torch.fft.fftfreq(h, device=device)[:, None]
        fx = torch.fft.rfftfreq(w, device=device)[None, :]
        self.gain = (0.5 / torch.hypot(fx, fy).clamp_min(F_MIN)) ** alpha

    def _filter(self, v: Tensor, gain: Tensor) -> Tensor:
        n, c, h, w = self.shape
        spectrum = torch.fft.rfft2(v.reshape(n, c, h, w)) * gain.to(v.dtype)
        return torch.fft.irfft2(spectrum, s=(h, w)).reshape(n, -1)

    def __call__(self, v: Tensor) -> Tensor:
        return self._filter(v, self.gain)

    def inverse(self, v: Tensor) -> Tensor:
        return self._filter(v, 1 / self.gain)
