"""`--precision auto` on the CPU: decided by what this CPU measurably does, not by its name.

A CPU without native bf16 dot products (AVX512-BF16 or AMX) would emulate bf16, which is always
slower than fp32: fp32, no probe. Elsewhere a short probe (about a second) times the trunk's
first blocks, forward and backward as an iteration runs them, in fp32 and in bf16 taking turns,
and bf16 is chosen when it is clearly faster. The answer is cached per CPU model, feature
flags, torch version and thread count, so each machine probes once. The bf16 trunk's quality
(final objective against all-fp32) is guarded by bench/bench_precision.py, not here.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from .low_precision import compute_trunk
from .machine import cpu_model, median_seconds, probe_entry, remembered
from .settings import Settings

log = logging.getLogger("pipeline.runtime")

# bf16 must beat fp32 by this much to be chosen: a tie goes to the exact path.
MARGIN = 1.10
ROUNDS = 5


@dataclass(frozen=True)
class Choice:
    precision: str   # fp32 or bf16
    reason: str      # one line for the summary


def native_bf16() -> list[str]:
    """The CPU's native bf16 dot-product features that torch sees."""
    flags = {"AMX": "_is_amx_tile_supported", "AVX512-BF16": "_is_avx512_bf16_supported"}
    return [name for name, fn in flags.items() if getattr(torch.cpu, fn, lambda: False)()]


def _probe_step(precision: str, size: tuple[int, int]) -> Callable[[], None]:
    """One forward and backward of VGG19 through relu3_1 (random weights: speed alone) on the
    code path an iteration takes in `precision`."""
    from ..gatys.layers import CONV_NAMES
    from ..gatys.vgg import Normalize, VGG19Trunk

    gen = torch.Generator().manual_seed(0)
    state, channels = {}, 3
    for name in CONV_NAMES[:CONV_NAMES.index("conv3_1") + 1]:
        out = {1: 64, 2: 128, 3: 256}[int(name[4])]
        state[f"{name}.weight"] = torch.randn(out, channels, 3, 3, generator=gen) * 0.05
        state[f"{name}.bias"] = torch.zeros(out)
        channels = out
    trunk = VGG19Trunk(state, Normalize((0, 0, 0), (1, 1, 1), False, 1 / 255), "max", "relu3_1")
    runtime = Settings(torch.device("cpu"), precision, channels_last=precision == "bf16")
    trunk = compute_trunk(trunk.to(memory_format=torch.channels_last)
                          if runtime.channels_last else trunk, runtime)
    x = runtime.layout(torch.rand(1, 3, size[1], size[0], generator=gen) * 255)
    x.requires_grad_(True)
    layers = ("relu1_1", "relu2_1", "relu3_1")

    def step() -> None:
        feats = trunk(x, layers)
        sum(f.float().square().mean() for f in feats.values()).backward()
        x.grad = None

    return step


def measure(size: tuple[int, int] = (192, 144)) -> dict[str, float]:
    """Median seconds per step for fp32 and bf16, taking turns (a drifting machine slows both)."""
    return median_seconds({p: _probe_step(p, size) for p in ("fp32", "bf16")}, ROUNDS)


def decide(features: list[str], timed: Callable[[], dict[str, float]]) -> Choice:
    if not features:
        return Choice("fp32", "auto: this CPU has no native bf16 (AVX512-BF16 or AMX)")
    seconds = timed()
    ratio = seconds["fp32"] / seconds["bf16"]
    if ratio >= MARGIN:
        return Choice("bf16", f"auto: bf16 measured {ratio:.2f}x fp32's speed on this CPU "
                              f"({', '.join(features)})")
    return Choice("fp32", f"auto: bf16 measured only {ratio:.2f}x fp32's speed on this CPU")


def choose_cpu_precision(cache_root: Path,
                         timed: Callable[[], dict[str, float]] = measure) -> Choice:
    """The cached choice for this machine, probing first if there is none (machine.remembered:
    concurrent workers take turns, so only one probes and none is timed while another runs)."""
    features = native_bf16()
    if not features:
        return decide(features, timed)
    entry = probe_entry(cache_root, "precision",
                        [cpu_model(), features, torch.__version__, torch.get_num_threads()])
    choice, probed = remembered(entry, lambda: decide(features, timed),
                                lambda kept: Choice(**kept), dataclasses.asdict)
    if probed:
        log.info("precision: %s (%s; cached in %s)", choice.precision, choice.reason,
                 entry.name)
    return choice
