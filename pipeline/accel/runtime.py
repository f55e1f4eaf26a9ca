"""Where and how the math runs: the runtime resolved for one device, and the speed switches
around the trunk.

Every setting a user can give is declared once, in RuntimeOptions (options.py): Runtime.create's
keyword arguments, the CLI's options of `stylize` and `run` (with their help) and what a worker is
sent all come from it. Runtime is the resolved, hashable result for one device; building it
(`create`) changes nothing in the process. The process-wide switches (cuDNN, tf32, the CPU
heap) are set in one place, `apply_process_settings`, which `Runtime.start` calls for the
process that will run the runtime; only glibc's one-arena limit comes earlier, when the package
is imported (cpu_heap.share_one_arena: it must precede every thread).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..errors import InputError
from ..io.files import cache_dir, use_cache
from . import cpu_heap, winograd
from .history_probe import history_left
from .low_precision import compute_trunk
from .options import (
    DEFAULT_PROVIDERS,
    MIN_BLOCK_SIZE,
    PROVIDER_NAMES,
    RuntimeOptions,
    parse_providers,
)
from .precision_probe import choose_cpu_precision
from .settings import Settings
from .stage_runs import start_run


def auto_precision(device: torch.device, cache: str | None) -> tuple[str, str]:
    """(precision, why) for --precision auto: bf16 on CUDA GPUs that have it; on the CPU
    whatever this CPU measured faster (precision_probe.py)."""
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return "bf16", "auto: this GPU has bf16 tensor cores"
        return "fp32", "auto: this GPU has no bf16"
    choice = choose_cpu_precision(cache_dir(cache))
    return choice.precision, choice.reason


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InputError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"device {name} requested but CUDA is not available here")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise InputError(f"device {name} does not exist ({torch.cuda.device_count()} GPUs)")
    elif device.type != "cpu":
        raise InputError(f"unsupported device {name!r}; use auto, cpu, cuda or cuda:N")
    return device


def resolve_winograd(asked: bool | None, device: torch.device, precision: str,
                     channels_last: bool) -> str:
    """off, on or auto (winograd.py): only an fp32 NCHW trunk on a CPU that NNPACK runs on
    has Winograd convolutions; `--winograd on` where NNPACK cannot run is an error."""
    if asked is False or device.type != "cpu" or precision != "fp32" or channels_last:
        return "off"
    if not winograd.available():
        if asked:
            raise InputError("--winograd on: NNPACK does not run on this CPU or torch build "
                             "(it needs x86-64 with AVX2 and FMA, or ARM NEON)")
        return "off"
    return "on" if asked else "auto"


def apply_process_settings(device: torch.device, options: RuntimeOptions) -> bool:
    """The process-wide switches a runtime on `device` wants: cuDNN autotuning and tf32 on
    CUDA; on the CPU, freed memory kept in the heap (cpu_heap.py). Call it before any torch
    work on the device (the CPU precision probe's too): a thread keeps the malloc arena it
    first allocated in. Returns whether the CPU heap now keeps freed memory."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = options.cudnn_benchmark
        # tf32 for the fp32 paths (losses, fp32 trunk and Grams): 10-bit mantissa products,
        # fp32 accumulation; well inside the tolerance the objective needs.
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        # A bf16 Gram sums over every pixel; cuBLAS may split that sum and add the parts in
        # bf16, which would lose the fp32 accumulation losses._GramMSE relies on.
        torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = False
        return False
    return options.keep_cpu_memory and cpu_heap.keep_freed_memory()


@dataclass(frozen=True)
class Runtime(Settings):
    """Settings for one device, resolved, and what the engine asks of them (gatys.engine's
    Numerics): the trunk in their precision and each stage's run."""

    @classmethod
    def create(cls, device: str = "auto", *args: Any, **kwargs: Any) -> Runtime:
        """Resolve RuntimeOptions(*args, **kwargs) for `device`: bf16 where it is measurably
        faster (auto_precision); channels_last on CUDA and with bf16 (on the CPU it measured
        slower than NCHW in fp32, faster in bf16). Changes nothing in the process: `start`
        does, for the process that will run it."""
        return cls.resolve(device, RuntimeOptions(*args, **kwargs))

    @classmethod
    def start(cls, device: str = "auto", *args: Any, **kwargs: Any) -> Runtime:
        """`create`, for the process that runs it: its process-wide switches are applied first
        (apply_process_settings), before the CPU precision probe does any torch work, and its
        cache is the process's (files.use_cache)."""
        options = RuntimeOptions(*args, **kwargs)
        use_cache(options.cache)
        kept = apply_process_settings(resolve_device(device), options)
        return cls.resolve(device, options, kept)

    @classmethod
    def resolve(cls, device: str, options: RuntimeOptions, heap_kept: bool | None = None
                ) -> Runtime:
        """`heap_kept`: whether the CPU heap keeps freed memory (None: as the options ask)."""
        dev = resolve_device(device)
        providers = options.validate()
        if heap_kept is None:
            heap_kept = options.keep_cpu_memory and dev.type == "cpu"
        precision, reason = options.precision, "set by --precision"
        if precision == "auto":
            precision, reason = auto_precision(dev, options.cache)
        channels_last = options.channels_last
        if channels_last is None:
            channels_last = dev.type == "cuda" or precision == "bf16"
        winograd = resolve_winograd(options.winograd, dev, precision, channels_last)
        return cls(dev, precision=precision, channels_last=channels_last, winograd=winograd,
                   cuda_graphs=options.cuda_graphs and dev.type == "cuda",
                   keep_cpu_memory=heap_kept,
                   split_batches=options.split_batches and dev.type == "cpu",
                   history_left=dev.type != "cpu" or history_left(cache_dir(options.cache)),
                   block_size=options.block_size, targets=options.targets, providers=providers,
                   trt_fp16=options.trt_fp16, cache=options.cache,
                   cache_targets=options.cache_targets, precision_reason=reason)

    def compute_trunk(self, trunk: Any) -> Any:
        """The trunk the optimization runs, in this runtime's precision (low_precision.py)."""
        return compute_trunk(trunk, self)

    def start_run(self, *args: Any) -> Any:
        """One stage's run (engine.StageRun's arguments): sharded over the cores on the CPU,
        replayed as a CUDA graph on a GPU, else plain (stage_runs.py)."""
        return start_run(*args, runtime=self)


__all__ = ["DEFAULT_PROVIDERS", "MIN_BLOCK_SIZE", "PROVIDER_NAMES", "Runtime", "RuntimeOptions",
           "apply_process_settings", "parse_providers", "resolve_device"]
