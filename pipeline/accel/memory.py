"""Peak memory of an optimization, estimated before it starts: a size that cannot fit is a
one-line error, not a crash (the kernel's OOM killer on CPU, an OOM mid-run on CUDA).

The activation part is measured, not modelled: the trunk runs once on a small probe image and
autograd's saved tensors are summed (the exact trunk, precision and layout of the run), then
scaled by the pixel count. The optimizer's state is counted from its definition.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import InputError
from ..gatys.blockwise import Grid
from ..gatys.params import StyleParams
from ..gatys.vgg import VGG19Trunk
from ..io.files import atomic_write_bytes
from ..io.mirror import fetch_missing
from .machine import probe_entry
from .winograd import FixedPlan, planned

PROBE = 128          # probe side: every layer through relu5_1 is at least 8x8
SAFETY = 0.8         # use at most this share of the free memory...
RESERVE = 1.5 * 2**30  # ...less what the process adds after planning: the ONNX Runtime
                       # session and the targets (measured: 1.1 GiB for a 4096 px job)
GIB = 2**30
# Blocks with a smaller inner side recompute more margin than they own (80 px of margin on
# each side through relu5_1): below it, a shorter L-BFGS history is the better trade.
MIN_BLOCK = 512
MARGIN_WARNING = 4  # x the image's own work: a --block-size this wasteful is said
# Past this side a block's margins cost under 35% more pixels: larger ones gain little time
# and take memory the rest of the process (targets, ONNX Runtime's arena) may need.
MAX_BLOCK = 1024
# By blocks, the image's own copies fill most of the memory: leave more room for the rest of
# the process than the whole-image plan does.
BLOCK_SAFETY = 0.7
MIN_HISTORY = 5
# With masks (gatys/guides.py), bytes per pixel and region: its guide on each style layer's
# grid in fp32 and its weights in the features' dtype (a third more pixels than the image's
# own over the five style layers). With the two more of the largest activation that masks
# add to the working set (_working_set), the estimate covers what bench/bench_memory.py
# --regions measures (BENCHMARKS.md, "Memory").
REGION_BYTES = 8
log = logging.getLogger("pipeline.memory")


@dataclass(frozen=True)
class PixelCost:
    """Bytes per input pixel of one image, from the probe."""

    saved: float      # tensors autograd keeps for the backward pass
    largest: float    # the largest single activation
    content: float    # content targets (fp32 features at the content layers)


@functools.lru_cache(maxsize=8)
def pixel_cost(net: VGG19Trunk, layers: tuple[str, ...], content_layers: tuple[str, ...],
               channels_last: bool, cache: Path | None = None) -> PixelCost:
    """The probe's figures, remembered in `cache` (its probes/ part) by everything they depend
    on: the trunk's structure and dtype, the layers, the layout, the device kind and torch's
    version; a later process starts without the probe's forward pass."""
    device = next(net.parameters()).device
    identity = [torch.__version__, device.type, repr(net), str(next(net.parameters()).dtype),
                layers, content_layers, channels_last]
    entry = None if cache is None else probe_entry(cache, "pixelcost", identity)
    if entry is not None:
        fetch_missing(entry)  # a cache in object storage: another machine's probe
        with contextlib.suppress(OSError, ValueError, TypeError):
            return PixelCost(**json.loads(entry.read_text()))
    cost = _probe(net, layers, content_layers, channels_last, device)
    if entry is not None:
        with contextlib.suppress(OSError):  # not kept: the next process probes again
            atomic_write_bytes(entry, json.dumps(dataclasses.asdict(cost)).encode())
    return cost


def _probe(net: VGG19Trunk, layers: tuple[str, ...], content_layers: tuple[str, ...],
           channels_last: bool, device: torch.device) -> PixelCost:
    weights = {t.untyped_storage().data_ptr() for t in (*net.parameters(), *net.buffers())}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in weights:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    # A Winograd trunk's convs save nothing for the backward whichever way they run (the
    # weights are frozen): all direct, the bytes are the same and no plan is measured for
    # the probe's size, which no run uses.
    net = planned(net, FixedPlan({}))
    x = torch.zeros(1, 3, PROBE, PROBE, device=device, requires_grad=True)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        feats = net(x, layers)
    pixels = PROBE * PROBE
    content = sum(4 * feats[k].numel() for k in content_layers)
    return PixelCost(sum(saved.values()) / pixels, max(saved.values()) / pixels, content / pixels)


def _image_copies(params: StyleParams, history: int) -> int:
    """fp32 copies of the image the optimizer holds."""
    if params.optimizer == "lbfgs":
        # s and y per history pair; x, grad, direction, previous grad; at the peak of a
        # direction, the stacked [g, y, s] and H g and gamma g (lbfgs.py); preconditioned,
        # P g beside the gradient, and the filter's spectrum (complex, half the frequencies:
        # one image), its filtered copy and its inverse transform (precondition.py).
        return 2 * history + 9 + (4 if params.lbfgs_precondition else 0)
    return 4  # x, grad, Adam's two moments


def _working_set(cost: PixelCost, regions: int) -> float:
    """Bytes per pixel of the backward's working set beyond the saved activations: gradients
    and the Grams' fp32 copies, four of the largest activation (which matched measurements at
    512-2048 px; bench/bench_memory.py), two more with masks."""
    return (4 + 2 * bool(regions)) * cost.largest


def bytes_per_image(cost: PixelCost, params: StyleParams, size: tuple[int, int],
                    history: int | None = None, regions: int = 0) -> int:
    """Peak bytes one image of `size` (w, h) adds: saved activations, the backward's working
    set, content targets, the masks' guides (`regions`: how many, 0 without masks) and the
    optimizer's copies of the image (fp32)."""
    pixels = size[0] * size[1]
    history = min(params.lbfgs_history, max(1, params.iterations)) if history is None else history
    per_pixel = (cost.saved + _working_set(cost, regions) + cost.content
                 + REGION_BYTES * regions)
    return int(per_pixel * pixels + _image_copies(params, history) * 4 * 3 * pixels)


def block_bytes(cost: PixelCost, params: StyleParams, size: tuple[int, int], side: int,
                margin: int, history: int, regions: int = 0) -> int:
    """Peak bytes one image adds when its objective runs by blocks of `side` (blockwise.py):
    a block's activations (its crop, margins included) instead of the image's, plus what
    stays whole: the optimizer's copies, the summed gradient and the TV term's working set
    (six more copies), the content targets (twice: as built and in the trunk's layout) and
    the masks' guides."""
    pixels = size[0] * size[1]
    crop = min(size[0], side + 2 * margin) * min(size[1], side + 2 * margin)
    whole = ((_image_copies(params, history) + 6) * 4 * 3 + 2 * cost.content
             + REGION_BYTES * regions) * pixels
    return int((cost.saved + _working_set(cost, regions)) * crop + whole)


def image_bytes(net: VGG19Trunk, params: StyleParams, size: tuple[int, int],
                channels_last: bool, regions: int = 0) -> int:
    """The pre-flight estimate for one image of `size` (w, h) on `net`, run whole."""
    cost = pixel_cost(net, params.layers, params.content_layers, channels_last)
    return bytes_per_image(cost, params, size, regions=regions)


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


@dataclass(frozen=True)
class Fit:
    """How one stage fits: by blocks of `block` px (0 = whole), with `history` L-BFGS pairs
    when fewer than the parameters ask (None: theirs)."""

    block: int = 0
    history: int | None = None


def plan_stage(net: VGG19Trunk, params: StyleParams, size: tuple[int, int], iterations: int,
               batch: int, device: torch.device, channels_last: bool, block: int = 0,
               cache: Path | None = None, regions: int = 0) -> Fit:
    """How a stage of `iterations` at `size` (w, h) fits on `device`: whole when the batch
    fits, else by the largest blocks that fit (`block` > 0: by blocks of that side, as the
    user asked). With one image, the L-BFGS history shrinks when no block of MIN_BLOCK px
    fits beside it, and says so. InputError when one image cannot fit at all;
    torch.OutOfMemoryError when the batch cannot but one image can (the batch runner then
    splits the batch). `cache`: where the probe's figures are remembered (pixel_cost);
    `regions`: how many regions the jobs' masks make (0: no masks)."""
    grid = Grid.of(params.layers)
    history = min(params.lbfgs_history, max(1, iterations))
    side = _aligned(block, grid) if block else 0
    if side and (overhead := ((side + 2 * grid.margin) / side) ** 2) > MARGIN_WARNING:
        _warn_once(f"blocks of {side} px each read a {grid.margin} px margin on every side: "
                   f"about {overhead:.0f}x the work of the image itself per iteration; "
                   f"--block-size 0 picks the largest blocks that fit")
    free = available_bytes(device)
    if free is None:
        return Fit(side)
    cost = pixel_cost(net, params.layers, params.content_layers, channels_last, cache)
    budget = SAFETY * free - RESERVE
    where = f"{size[0]}x{size[1]} px on {device}"
    whole = bytes_per_image(cost, params, size, history, regions)
    if not side and batch * whole <= budget:
        return Fit()
    if not side and whole <= budget:
        raise torch.OutOfMemoryError(f"a batch of {batch} at {where} needs about "
                                     f"{batch * whole / GIB:.1f} GiB, {free / GIB:.1f} GiB free")
    budget = BLOCK_SAFETY * free - RESERVE
    if not side:
        side = _largest_block(cost, params, size, grid, history, budget / batch, regions)
        small = side < min(MIN_BLOCK, max(size))
        if small and batch > 1:
            raise torch.OutOfMemoryError(f"a batch of {batch} at {where} does not fit, even by "
                                         f"blocks; {free / GIB:.1f} GiB free")
        if small and params.optimizer == "lbfgs":
            room = budget - block_bytes(cost, params, size, MIN_BLOCK, grid.margin, 0, regions)
            shorter = int(room // (2 * 4 * 3 * size[0] * size[1]))
            if MIN_HISTORY <= shorter < history:
                log.warning("%s: L-BFGS keeps %d pairs instead of %d to fit in %.1f GiB",
                            where, shorter, history, free / GIB)
                return Fit(_largest_block(cost, params, size, grid, shorter, budget, regions),
                           shorter)
    need = block_bytes(cost, params, size, side or grid.align, grid.margin, history, regions)
    if need * batch > budget:
        # The least it could take: the smallest blocks, the shortest history worth keeping.
        least = block_bytes(cost, params, size, grid.align, grid.margin,
                            min(history, MIN_HISTORY), regions)
        raise InputError(f"{where} needs about {least / GIB:.1f} GiB per image even by blocks "
                         f"(and {min(history, MIN_HISTORY)} L-BFGS pairs) but "
                         f"{budget / GIB:.1f} GiB of the {free / GIB:.1f} GiB free is usable: "
                         "use a smaller size")
    return Fit(side)


@functools.cache
def _warn_once(message: str) -> None:
    log.warning(message)


def _aligned(side: int, grid: Grid) -> int:
    return max(grid.align, side // grid.align * grid.align)


def _largest_block(cost: PixelCost, params: StyleParams, size: tuple[int, int], grid: Grid,
                   history: int, budget: float, regions: int) -> int:
    """The largest block side (a multiple of the grid) that fits `budget` for one image; 0
    when not even the smallest does."""
    fixed = block_bytes(cost, params, size, 0, 0, history, regions)
    room = budget - fixed
    if room <= 0:
        return 0
    crop = math.isqrt(int(room / (cost.saved + _working_set(cost, regions))))
    side = (crop - 2 * grid.margin) // grid.align * grid.align
    return max(0, min(side, max(size), MAX_BLOCK))
