"""Peak memory of an optimization, estimated before it starts: a size that cannot fit is a
one-line error, not a crash (the kernel's OOM killer on CPU, an OOM mid-run on CUDA).

The activation part is measured, not modelled: the trunk runs once on a small probe image and
autograd's saved tensors are summed (the exact trunk, precision and layout of the run), then
scaled by the pixel count. The optimizer's state is counted from its definition.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import InputError
from ..gatys.params import StyleParams
from ..gatys.vgg import VGG19Trunk

PROBE = 128          # probe side: every layer through relu5_1 is at least 8x8
SAFETY = 0.9         # use at most this share of the free memory
GIB = 2**30


@dataclass(frozen=True)
class PixelCost:
    """Bytes per input pixel of one image, from the probe."""

    saved: float      # tensors autograd keeps for the backward pass
    largest: float    # the largest single activation
    content: float    # content targets (fp32 features at the content layers)


@functools.lru_cache(maxsize=8)
def pixel_cost(net: VGG19Trunk, layers: tuple[str, ...], content_layers: tuple[str, ...],
               channels_last: bool) -> PixelCost:
    device = next(net.parameters()).device
    weights = {t.untyped_storage().data_ptr() for t in (*net.parameters(), *net.buffers())}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in weights:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    x = torch.zeros(1, 3, PROBE, PROBE, device=device, requires_grad=True)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        feats = net(x, layers)
    pixels = PROBE * PROBE
    content = sum(4 * feats[k].numel() for k in content_layers)
    return PixelCost(sum(saved.values()) / pixels, max(saved.values()) / pixels, content / pixels)


def bytes_per_image(cost: PixelCost, params: StyleParams, size: tuple[int, int]) -> int:
    """Peak bytes one image of `size` (w, h) adds: saved activations, the backward's working
    set (gradients and the Grams' fp32 copies: four of the largest activation, which matched
    measurements at 512-2048 px; bench/bench_memory.py), content targets, and the optimizer's
    copies of the image (fp32)."""
    pixels = size[0] * size[1]
    image = 4 * 3 * pixels
    if params.optimizer == "lbfgs":
        # s and y per history pair; x, grad, direction, previous grad; at the peak of a
        # direction, the stacked [g, y, s] and H g and gamma g (lbfgs.py).
        copies = 2 * min(params.lbfgs_history, max(1, params.iterations)) + 9
    else:
        copies = 4  # x, grad, Adam's two moments
    per_pixel = cost.saved + 4 * cost.largest + cost.content
    return int(per_pixel * pixels + copies * image)


def image_bytes(net: VGG19Trunk, params: StyleParams, size: tuple[int, int],
                channels_last: bool) -> int:
    """The pre-flight estimate for one image of `size` (w, h) on `net`."""
    cost = pixel_cost(net, params.layers, params.content_layers, channels_last)
    return bytes_per_image(cost, params, size)


def available_bytes(device: torch.device) -> int | None:
    """Free memory on the device; None where it cannot be read (the check is then skipped)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    if device.type != "cpu":
        return None
    free = _meminfo_available()
    limit = _cgroup_headroom()
    if free is None:
        return limit
    return free if limit is None else min(free, limit)


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _cgroup_headroom() -> int | None:
    """A container's memory limit minus its use (cgroup v2); None without a limit."""
    root = Path("/sys/fs/cgroup")
    try:
        limit = (root / "memory.max").read_text().strip()
        if limit == "max":
            return None
        return int(limit) - int((root / "memory.current").read_text())
    except (OSError, ValueError):
        return None


def check_fits(net: VGG19Trunk, params: StyleParams, size: tuple[int, int], batch: int,
               device: torch.device, channels_last: bool) -> None:
    """InputError when one image of `size` cannot fit; torch.OutOfMemoryError when the batch
    cannot but one image can (the batch runner then splits the batch)."""
    free = available_bytes(device)
    if free is None:
        return
    one = image_bytes(net, params, size, channels_last)
    budget = SAFETY * free
    where = f"{size[0]}x{size[1]} px on {device}"
    if one > budget:
        raise InputError(f"{where} needs about {one / GIB:.1f} GiB per image but "
                         f"{free / GIB:.1f} GiB is free: use a smaller size, or a smaller "
                         "lbfgs_history (L-BFGS keeps 2 copies of the image per history pair)")
    if batch * one > budget:
        raise torch.OutOfMemoryError(f"a batch of {batch} at {where} needs about "
                                     f"{batch * one / GIB:.1f} GiB, {free / GIB:.1f} GiB free")
