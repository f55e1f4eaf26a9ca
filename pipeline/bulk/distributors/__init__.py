"""Distributors: where a run's workers run. Each is a small class over the same interface
(distribute.Distributor), as img2dataset's are: `local` (a process per device of this
machine) and `ray` (actors over a Ray cluster). The run loop (distribute.py) is shared."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

from ...collector import paused

# A Ray actor's process imports torch here first, to make its worker: with the collector
# paused, as every process that computes does (collector.py).
with paused():
    import torch

    from ...accel.runtime import resolve_device
    from ...errors import InputError
    from ..distribute import Distributor, Slot
    from ..jobs import auto_cpu_workers
    from ..run_options import DISTRIBUTORS
    from ..worker import WorkerConfig

log = logging.getLogger("pipeline.run")


def device_names(spec: str) -> list[str]:
    """`auto`: every GPU, else the CPU; or a comma list of cpu, cuda and cuda:N, each checked
    here (CUDA must be there), before anything is written."""
    if spec == "auto":
        return ([f"cuda:{i}" for i in range(torch.cuda.device_count())]
                if torch.cuda.is_available() else ["cpu"])
    names = [d.strip() for d in spec.split(",") if d.strip()]
    if not names:
        raise InputError(f"--devices {spec!r}: name at least one device (auto, cpu, cuda:N)")
    for name in names:
        if name == "auto":
            raise InputError(f"--devices {spec!r}: auto stands alone, not in a list")
        resolve_device(name)
    return names


def cpu_workers(workers: int, cores: int, sizes: list[tuple[int, int]], where: str) -> int:
    """How many CPU workers a machine of `cores` cores runs for `--workers` (0:
    auto_cpu_workers): at most one per core (more would only share the cores and hold a model
    each), said where more were asked for."""
    if workers > cores:
        log.warning("--workers %d: %s has %d core%s; running one CPU worker per core",
                    workers, where, cores, "s" * (cores != 1))
    return max(1, min(cores, workers or auto_cpu_workers(sizes, cores)))


def local_slots(spec: str, workers: int, sizes: list[tuple[int, int]]) -> list[Slot]:
    """The devices of `spec` (device_names). The CPU gets `cpu_workers` processes, each with
    an equal share of the cores."""
    cores, out = os.cpu_count() or 1, list[Slot]()
    for name in device_names(spec):
        if name == "cpu":
            k = cpu_workers(workers, cores, sizes, "this machine")
            out += [Slot("cpu", "cpu", max(1, cores // k), k)] * k
        else:
            device = name if ":" in name else "cuda:0"
            out.append(Slot(device, device, 1))
    return out


def check_distributor(name: str, devices: str) -> None:
    """Refuse a run whose workers could not start, before it writes anything (joining a Ray
    cluster is checked when the distributor opens, also before any write). `name` is one of
    DISTRIBUTORS: RunOptions declares them as the distributor's choices and checks that
    first."""
    if name == "local":
        device_names(devices)
    else:
        from . import ray_cluster  # noqa: F401  (InputError naming the extra when missing)


@contextmanager
def open_distributor(name: str, config: WorkerConfig, devices: str, workers: int,
                     ray_address: str | None, sizes: list[tuple[int, int]]
                     ) -> Iterator[Distributor]:
    """The named distributor with its slots, closed (its workers ended) on the way out."""
    if name == "local":
        from .local import LocalDistributor

        found: Distributor = LocalDistributor(local_slots(devices, workers, sizes), config)
    elif name == "ray":
        from .ray_cluster import RayDistributor

        found = RayDistributor(ray_address, config, workers, sizes)
    else:
        raise InputError(f"unknown distributor {name!r}; use {' or '.join(DISTRIBUTORS)}")
    try:
        yield found
    finally:
        found.close()
