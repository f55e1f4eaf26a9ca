"""Which way round this CPU's GEMM reads the L-BFGS history faster, measured once per machine.

Every L-BFGS step multiplies its whole history (2m vectors of the image's size) by three
vectors (gatys/lbfgs.py, pass 1). The numbers are the same whichever factor the history is,
but MKL's speed is not: on the Intel Xeon with AMX the history as the transposed right factor
runs several times faster, and on two threads only that way round uses both; on an AMD EPYC
with AVX512-BF16 the left factor measured faster. So a short probe (a few hundredths of a
second) times both on a history of 100 pairs, taking turns, and the right factor is chosen
when it is clearly faster. The answer is cached per CPU model, torch version and thread count,
so each machine probes once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import torch

from .machine import cpu_model, median_seconds, probe_entry, remembered

log = logging.getLogger("pipeline.runtime")

# The right factor must beat the left by this much: a tie keeps the left, so a machine near
# the tie does not flip between probes (one thread of an AMD EPYC measures near a tie, on
# either side from one probe to the next; where the right factor wins, it wins many times).
MARGIN = 1.25
ROUNDS = 5
PAIRS, PIXELS = 100, 96 * 96
SIDES = ("left", "right")


def measure() -> dict[str, float]:
    """Median seconds of pass 1's product with the history as the left and as the right factor
    (fp32, 96x96 px images), taking turns."""
    gen = torch.Generator().manual_seed(0)
    history = torch.randn(2 * PAIRS, 3 * PIXELS, generator=gen)
    vectors = torch.randn(3, 3 * PIXELS, generator=gen)
    return median_seconds({"left": lambda: torch.mm(history, vectors.t()),
                           "right": lambda: torch.mm(vectors, history.t())}, ROUNDS)


def _decode(kept: object) -> bool:
    if kept not in SIDES:
        raise ValueError(f"not a side: {kept!r}")
    return kept == "left"


def history_left(cache_root: Path, timed: Callable[[], dict[str, float]] = measure) -> bool:
    """Whether L-BFGS should read its history as the left factor on this CPU: the cached
    answer, probed first if there is none (machine.remembered: one process of a machine
    probes, the others wait for its answer)."""
    entry = probe_entry(cache_root, "history",
                        [cpu_model(), torch.__version__, torch.get_num_threads()])

    def decide() -> bool:
        seconds = timed()
        return seconds["left"] / seconds["right"] < MARGIN

    left, probed = remembered(entry, decide, _decode, lambda left: SIDES[not left])
    if probed:
        log.info("L-BFGS history: the %s factor of its products (measured; cached in %s)",
                 SIDES[not left], entry.name)
    return left
