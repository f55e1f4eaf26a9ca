"""The fp32 trunk's 3x3 convolutions on the CPU by Winograd's minimal filtering (NNPACK's
F(6x6, 3x3)), layer by layer and direction by direction where this CPU measures it faster.

Why: oneDNN's direct fp32 convolution already runs near the FMA peak of a CPU without bf16
dot products, so the only way to a faster fp32 iteration there is fewer multiplies. Winograd's
transform computes a 6x6 output tile from an 8x8 input tile with 64 products per channel pair
instead of 324, at the cost of transforms per call. It wins on the mid-sized layers on one
thread and loses on small maps, where the per-call kernel transform dominates; on more threads
oneDNN scales and NNPACK (one thread here, see `available`) does not (BENCHMARKS.md, "Winograd
convolutions"). So `auto` times both per layer, direction and image size (`measure_layers`),
then keeps that plan only where a whole forward and backward pass of the trunk with it beats
the direct trunk (`whole_pass_check`), once per machine: layers that each won alone can lose
together (on two threads, a plan of per-layer wins measured slower in the pass than none),
and of many small measured wins, some are noise.

The backward needs only the gradient to the input (the weights are frozen): a 3x3
convolution of the output's gradient with the kernel flipped and its channels swapped, which
NNPACK computes the same way. Its transforms round differently from a direct sum, far below
what an 8-bit image shows (tests/test_winograd.py bounds it). Each sample is its own call
(NNPACK's inference path), so a sample's result does not depend on its batch.
"""

from __future__ import annotations

import copy
import functools
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..gatys.layers import pools_through
from ..gatys.vgg import VGG19Trunk
from .machine import cpu_model, probe_entry, remembered

log = logging.getLogger("pipeline.runtime")

MARGIN = 1.05  # Winograd must beat the direct convolution by this much to be chosen
ROUNDS = 2     # timed rounds per layer and direction after a warm-up; the fastest counts

Choice = tuple[bool, bool]  # (forward by Winograd, backward by Winograd)
# In the cache key: plans cached before the whole-pass check are measured again, not kept.
CHECKED = "whole pass"


@functools.cache
def available() -> bool:
    """Whether NNPACK runs on this CPU (x86-64 with AVX2 and FMA, or ARM NEON). Its thread
    pool is made here, at the first call, with one thread: a pool of more would take the CPU
    shards' calls one at a time (pthreadpool runs one job at once), while a pool of one runs
    each call on its caller's thread."""
    if not torch.backends.nnpack.is_available():  # also initializes NNPACK
        return False
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch._nnpack_spatial_convolution(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 3, 3),
                                          None, [1, 1])
    except RuntimeError:
        return False
    finally:
        torch.set_num_threads(threads)
    return True


def _winograd(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    x = x.contiguous()
    parts = [torch._nnpack_spatial_convolution(x[i:i + 1], weight, bias, [1, 1])
             for i in range(x.shape[0])]
    return parts[0] if len(parts) == 1 else torch.cat(parts)


class _Conv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, conv: WinogradConv) -> Tensor:  # type: ignore[override]
        fwd, bwd = conv.choice(x)
        ctx.conv, ctx.input_shape, ctx.winograd = conv, x.shape, bwd
        if fwd:
            return _winograd(x, conv.weight, conv.bias)
        return F.conv2d(x, conv.weight, conv.bias, padding=1)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        conv = ctx.conv
        if ctx.winograd:
            return _winograd(grad, conv.flipped, None), None
        return torch.nn.grad.conv2d_input(ctx.input_shape, conv.weight, grad, padding=1), None


class WinogradConv(nn.Conv2d):
    """A 3x3, stride 1, padding 1 `conv` (its parameters shared) whose forward and backward
    each run by Winograd or directly, as `plan` says for the input's size."""

    def __init__(self, conv: nn.Conv2d, name: str, plan: Plan):
        super().__init__(conv.in_channels, conv.out_channels, 3, padding=1, device="meta")
        self.weight, self.bias = conv.weight, conv.bias
        self.register_buffer("flipped", conv.weight.detach().transpose(0, 1).flip(2, 3)
                             .contiguous())
        self.name, self.plan = name, plan

    def choice(self, x: Tensor) -> Choice:
        return self.plan.choice(self.name, x.shape[2], x.shape[3])

    def forward(self, x: Tensor) -> Tensor:
        return _Conv.apply(x, self)


class Plan:
    """Which convs of one trunk run by Winograd, per input size and thread count: all of them
    (`always`), or what `measure` found faster, measured at the first image of each size and
    kept in `cache` (probes/). Shared by the trunk's convs; conv1_1's call at a new image
    size plans every layer, under a lock (the CPU shards call concurrently)."""

    def __init__(self, trunk: VGG19Trunk, always: bool, cache: Path | None):
        self.trunk, self.always, self.cache = trunk, always, cache
        self.measure: Callable[..., dict[str, Choice]] = self.measure_checked
        self.choices: dict[tuple[str, int, int, int], Choice] = {}
        self.lock = threading.Lock()

    def choice(self, name: str, h: int, w: int) -> Choice:
        if self.always:
            return True, True
        key = (name, h, w, torch.get_num_threads())
        if key not in self.choices and name == "conv1_1":
            with self.lock:
                if key not in self.choices:
                    self._plan(h, w, key[3])
        return self.choices.get(key, (False, False))  # a block's odd crop: direct

    def measure_checked(self, convs: dict[str, WinogradConv], h: int, w: int
                        ) -> dict[str, Choice]:
        return whole_pass_check(self.trunk, measure_layers(convs, h, w), h, w)

    def _plan(self, h: int, w: int, threads: int) -> None:
        convs = {name: layer for name, layer in self.trunk.layers.items()
                 if isinstance(layer, WinogradConv)}
        found = _cached(self.cache, h, w, threads, lambda: self.measure(convs, h, w))
        for name, choice in found.items():
            pools = pools_through(name)
            self.choices[(name, h >> pools, w >> pools, threads)] = choice


class FixedPlan:
    """Choices given per conv, whatever the size: a candidate `whole_pass_check` times."""

    def __init__(self, choices: dict[str, Choice]):
        self.choices = choices

    def choice(self, name: str, h: int, w: int) -> Choice:
        return self.choices.get(name, (False, False))


def planned(trunk: VGG19Trunk, plan: FixedPlan) -> VGG19Trunk:
    """A copy of the Winograd `trunk` (weights shared) whose convs run by `plan`."""
    memo: dict[int, object] = {id(t): t for t in (*trunk.parameters(), *trunk.buffers())}
    for layer in trunk.layers.values():
        if isinstance(layer, WinogradConv):
            memo[id(layer.plan)] = plan
    return copy.deepcopy(trunk, memo)


def whole_pass(trunk: VGG19Trunk, h: int, w: int) -> Callable[[], object]:
    """The trunk's forward and backward to the input for an h x w image, as an iteration runs
    it (the weights are frozen: the gradient reaches the pixels only)."""
    x = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(0)) * 255
    x.requires_grad_(True)
    last = trunk.layer_names[-1]

    def run() -> object:
        # Hooks of the caller's pass (the memory probe counts what autograd saves) are not
        # for this one: its own, which keep each tensor as it is, take their place.
        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(_same, _same):
            return torch.autograd.grad(trunk(x, (last,))[last].sum(), x)

    return run


def _same(t: Tensor) -> Tensor:
    return t


def whole_pass_check(trunk: VGG19Trunk, found: dict[str, Choice], h: int, w: int,
                     fastest: Callable[..., dict[str, float]] | None = None
                     ) -> dict[str, Choice]:
    """`found` where the whole pass with it beats the direct trunk's by MARGIN, else every
    conv direct."""
    direct = dict.fromkeys(found, (False, False))
    if found == direct:
        return found
    t = (fastest or _fastest)({
        "plan": whole_pass(planned(trunk, FixedPlan(found)), h, w),
        "direct": whole_pass(planned(trunk, FixedPlan(direct)), h, w)}, ROUNDS + 1)
    if t["direct"] >= MARGIN * t["plan"]:
        return found
    log.info("winograd at %dx%d px on %d thread(s): the layers measured faster alone made a "
             "whole pass no faster (%.3f s against %.3f s direct); every layer direct", w, h,
             torch.get_num_threads(), t["plan"], t["direct"])
    return direct


def _fastest(calls: dict[str, Callable[[], object]], rounds: int = ROUNDS
             ) -> dict[str, float]:
    """Seconds of each call, taking turns after one warm-up each; the fastest of `rounds`
    (noise only ever adds time)."""
    for call in calls.values():
        call()
    best = dict.fromkeys(calls, float("inf"))
    for _ in range(rounds):
        for key, call in calls.items():
            start = time.perf_counter()
            call()
            best[key] = min(best[key], time.perf_counter() - start)
    return best


def layer_calls(conv: WinogradConv, name: str, h: int, w: int, gen: torch.Generator
                ) -> dict[str, Callable[[], object]]:
    """The four ways to run conv `name` of a trunk for an h x w image (one sample): direct
    and Winograd, forward and backward to the input."""
    pools = pools_through(name)
    x = torch.rand(1, conv.in_channels, h >> pools, w >> pools, generator=gen)
    g = torch.randn(1, conv.out_channels, h >> pools, w >> pools, generator=gen)
    return {"direct": lambda: F.conv2d(x, conv.weight, conv.bias, padding=1),
            "winograd": lambda: _winograd(x, conv.weight, conv.bias),
            "direct back": lambda: torch.nn.grad.conv2d_input(x.shape, conv.weight, g,
                                                              padding=1),
            "winograd back": lambda: _winograd(g, conv.flipped, None)}


@torch.no_grad()
def measure_layers(convs: dict[str, WinogradConv], h: int, w: int) -> dict[str, Choice]:
    """Per conv, forward and backward: Winograd where it beats the direct convolution by
    MARGIN at this image size on this thread count."""
    gen = torch.Generator().manual_seed(0)
    found: dict[str, Choice] = {}
    for name, conv in convs.items():
        t = _fastest(layer_calls(conv, name, h, w, gen))
        found[name] = (t["direct"] >= MARGIN * t["winograd"],
                       t["direct back"] >= MARGIN * t["winograd back"])
    return found


def _cached(cache: Path | None, h: int, w: int, threads: int,
            measure: Callable[[], dict[str, Choice]]) -> dict[str, Choice]:
    """The plan for this machine, image size and thread count from the cache's probes/ part,
    measured first if it has none (machine.remembered: the processes of one machine take
    turns, a plan timed while another process measures would be skewed)."""
    if cache is None:
        return measure()
    entry = probe_entry(cache, "winograd", [cpu_model(), torch.__version__, threads, h, w,
                                            CHECKED])
    found, measured = remembered(entry, measure, lambda kept: {
        name: (bool(f), bool(b)) for name, (f, b) in kept.items()}, lambda plan: plan)
    if measured:
        chosen = [f"{name}{'' if f and b else ' forward' if f else ' backward'}"
                  for name, (f, b) in found.items() if f or b]
        log.info("winograd at %dx%d px on %d thread(s): %s (cached in %s)", w, h, threads,
                 ", ".join(chosen) or "no layer", entry.name)
    return found


def winograd_trunk(trunk: VGG19Trunk, always: bool, cache: Path | None) -> VGG19Trunk:
    """A copy of the fp32 `trunk` (weights shared) whose convs run by `Plan`."""
    fast = copy.deepcopy(trunk, {id(t): t for t in (*trunk.parameters(), *trunk.buffers())})
    plan = Plan(fast, always, cache)
    for name, layer in trunk.layers.items():
        if isinstance(layer, nn.Conv2d):
            fast.layers[name] = WinogradConv(layer, name, plan)
    return fast
