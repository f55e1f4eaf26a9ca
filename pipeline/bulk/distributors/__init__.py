"""Distributors: where a run's workers run. Each is a small class over the same interface
(distribute.Distributor), as img2dataset's are: `local` (a process per device of this
machine) and `ray` (actors over a Ray cluster). The run loop (distribute.py) is shared."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from ...errors import InputError
from ..distribute import Distributor, Slot
from ..jobs import auto_cpu_workers
from ..worker import WorkerConfig

NAMES = ("local", "ray")


def local_slots(spec: str, workers: int, sizes: list[tuple[int, int]]) -> list[Slot]:
    """`auto`: every GPU, else the CPU; or a comma list. The CPU gets `workers` processes (0:
    auto_cpu_workers), each with an equal share of the cores."""
    if spec == "auto":
        names = ([f"cuda:{i}" for i in range(torch.cuda.device_count())]
                 if torch.cuda.is_available() else ["cpu"])
    else:
        names = [d.strip() for d in spec.split(",") if d.strip()]
    cores = os.cpu_count() or 1
    cpu_workers = max(1, workers or auto_cpu_workers(sizes, cores))
    out: list[Slot] = []
    for name in names:
        if name == "cpu":
            out += [Slot("cpu", "cpu", max(1, cores // cpu_workers), cpu_workers)] * cpu_workers
        elif name.startswith("cuda"):
            if not torch.cuda.is_available():
                raise InputError(f"device {name} requested but CUDA is not available here")
            device = name if ":" in name else "cuda:0"
            out.append(Slot(device, device, 1))
        else:
            raise InputError(f"unknown device {name!r}; use auto, cpu or cuda:N")
    return out


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
        raise InputError(f"unknown distributor {name!r}; use {' or '.join(NAMES)}")
    try:
        yield found
    finally:
        found.close()
