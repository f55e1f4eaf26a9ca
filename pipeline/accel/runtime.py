"""Where and how the math runs: device, precision and the speed switches around the trunk.

Every setting a user can give is declared once, in RuntimeOptions: Runtime.create's keyword
arguments, the CLI's options of `stylize` and `run` (with their help) and what a worker is
sent all come from it. Runtime is the resolved, hashable result for one device; building it
(`create`) changes nothing in the process. The process-wide switches (cuDNN, tf32, the CPU
heap) are set in one place, `apply_process_settings`, which `Runtime.start` calls for the
process that will run the runtime.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch

from ..errors import InputError
from ..io.files import CACHE_ENV
from . import cpu_heap

PRECISIONS = ("auto", "fp32", "bf16", "fp64")
# The trunk's dtype per precision; the pixels and the losses are fp32 (fp64 for fp64).
TRUNK_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp64": torch.float64}
PROVIDER_NAMES = {"tensorrt": "TensorrtExecutionProvider", "cuda": "CUDAExecutionProvider",
                  "cpu": "CPUExecutionProvider"}
DEFAULT_PROVIDERS = ("tensorrt", "cuda", "cpu")
MIN_BLOCK_SIZE = 16  # the stride of relu5_1: smaller blocks were rounded up to it, silently


def setting(default: Any, help: str, *, words: dict[str, Any] | None = None,
            flag: str | None = None, envvar: str | None = None) -> Any:
    """A RuntimeOptions field. `words`: the CLI spells the value as one of these words (e.g.
    auto/on/off for None/True/False); `flag`, `envvar`: the CLI option's name and variable
    when they differ from the field's."""
    return field(default=default, metadata={"help": help, "words": words, "flag": flag,
                                            "envvar": envvar})


@dataclass(frozen=True)
class RuntimeOptions:
    """The user's speed and placement settings, before they are resolved for a device."""

    precision: str = setting(
        "auto", "Trunk precision: auto, fp32, bf16 or fp64. auto: bf16 on CUDA GPUs that have "
        "it; on the CPU bf16 where the CPU has native bf16 dot products (AVX512-BF16 or AMX) "
        "and a one-second probe, cached per machine, measures it faster; else fp32. bf16 "
        "covers the convolutions and the Gram GEMMs (fp32 accumulation); the first conv reads "
        "the pixels in fp32 and the losses are always fp32. fp64: reference runs (slow).")
    channels_last: bool | None = setting(
        None, "NHWC memory layout for the trunk: auto (on for CUDA and bf16), on or off.",
        words={"auto": None, "on": True, "off": False})
    cudnn_benchmark: bool = setting(
        True, "Let cuDNN autotune conv algorithms per image size (CUDA only).")
    cuda_graphs: bool = setting(
        True, "CUDA: capture each batch's iteration once as a CUDA graph and replay it (with "
        "L-BFGS the whole iteration, objective, gradient and step; with Adam the objective "
        "and gradient): a few hundred kernels launched at once instead of one by one from "
        "Python, and no host round trip per iteration.")
    keep_cpu_memory: bool = setting(
        True, "CPU: keep freed memory in the process for the next iteration instead of "
        "returning it to the kernel (no page faults on large activations; returned after each "
        "batch).")
    split_batches: bool = setting(
        True, "CPU: run a batch as one shard per core, stepped side by side with one thread "
        "each, instead of one batch whose every op is split over the cores (faster for "
        "batches of 2+).")
    block_size: int = setting(
        0, "Compute the objective by blocks of at most this many pixels square, with exact "
        "whole-image losses and gradients (no seams): memory then grows with the block, not the "
        "image. 0 = auto: whole images when they fit in memory, else the largest blocks that "
        "do (and, if even 512 px blocks do not fit, a shorter L-BFGS history).")
    targets: str = setting(
        "onnx", "Compute content/style targets with onnx (ONNX Runtime over the exported "
        "trunk) or torch.")
    providers: str = setting(
        "auto", "ONNX Runtime providers in order of choice, e.g. cuda,cpu. auto = "
        "tensorrt,cuda,cpu, keeping those that load.")
    trt_fp16: bool = setting(False, "TensorRT fp16 for targets (default fp32).")
    cache: str | None = setting(
        None, "Cache root for weights, ONNX models, TensorRT engines and targets.  [default: "
        "the user cache dir]", flag="--cache-dir", envvar=CACHE_ENV)
    cache_targets: bool = setting(True, "Keep computed targets in the cache.")

    def validate(self) -> tuple[str, ...]:
        """InputError naming the first bad setting, before any work; the providers parsed."""
        if self.precision not in PRECISIONS:
            raise InputError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.targets not in ("onnx", "torch"):
            raise InputError(f"targets must be onnx or torch, got {self.targets!r}")
        if self.block_size != 0 and self.block_size < MIN_BLOCK_SIZE:
            raise InputError(f"block size must be 0 (auto) or at least {MIN_BLOCK_SIZE} px, got "
                             f"{self.block_size}")
        return parse_providers(self.providers)


def parse_providers(text: str | None) -> tuple[str, ...]:
    """'tensorrt,cuda,cpu' (short or full names) -> short names, validated."""
    if not text or text == "auto":
        return DEFAULT_PROVIDERS
    names = tuple(p.strip().lower().removesuffix("executionprovider") for p in text.split(","))
    bad = [n for n in names if n not in PROVIDER_NAMES]
    if bad:
        raise InputError(f"unknown ONNX Runtime providers {bad}; use tensorrt, cuda, cpu")
    return names


def auto_precision(device: torch.device, cache: str | None) -> tuple[str, str]:
    """(precision, why) for --precision auto: bf16 on CUDA GPUs that have it; on the CPU
    whatever this CPU measured faster (precision_probe.py)."""
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return "bf16", "auto: this GPU has bf16 tensor cores"
        return "fp32", "auto: this GPU has no bf16"
    from ..io.files import cache_dir
    from .precision_probe import choose_cpu_precision

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
class Runtime:
    """Resolved settings for one device; none of them changes the objective, only how it is
    computed. Hashable: trunks and compute trunks are cached per runtime."""

    device: torch.device
    precision: str = "fp32"       # resolved: fp32, bf16 (bf16 convs and Gram GEMMs; losses fp32)
                                  # or fp64 (reference runs: float rounding far below 8 bits)
    channels_last: bool = True    # NHWC convs: faster for bf16 oneDNN and cuDNN tensor cores
    cuda_graphs: bool = False     # CUDA: replay each stage's iteration as a graph
    keep_cpu_memory: bool = False  # CPU: the heap keeps freed memory; release it after a batch
    split_batches: bool = False   # CPU: a batch's shards step side by side, one per core
    block_size: int = 0           # objective by blocks of this side; 0: when it does not fit
    targets: str = "onnx"         # target features from ONNX Runtime ("onnx") or PyTorch ("torch")
    providers: tuple[str, ...] = DEFAULT_PROVIDERS  # ORT providers, in order of choice
    trt_fp16: bool = False        # TensorRT fp16 for targets (off: targets stay fp32-exact)
    cache: str | None = None      # cache root; None: $STYLE_PIPELINE_CACHE or the user cache dir
    cache_targets: bool = True    # keep computed targets on disk
    precision_reason: str = "set by --precision"  # one line for summaries

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
        (apply_process_settings), before the CPU precision probe does any torch work."""
        options = RuntimeOptions(*args, **kwargs)
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
        return cls(dev, precision, channels_last, options.cuda_graphs and dev.type == "cuda",
                   heap_kept, options.split_batches and dev.type == "cpu", options.block_size,
                   options.targets,
                   providers, options.trt_fp16, options.cache, options.cache_targets, reason)

    @property
    def trunk_dtype(self) -> torch.dtype:
        return TRUNK_DTYPES[self.precision]

    @property
    def pixel_dtype(self) -> torch.dtype:
        """The optimized images' and the losses' dtype."""
        return torch.promote_types(self.trunk_dtype, torch.float32)

    def layout(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def widened(self) -> Runtime:
        """This runtime with the trunk in fp32 (fp64 stays): final losses are reported in it."""
        return self if self.precision == "fp64" else replace(self, precision="fp32")

    def compute_trunk(self, trunk: Any) -> Any:
        """The trunk the optimization runs, in this runtime's precision (low_precision.py)."""
        from .low_precision import compute_trunk

        return compute_trunk(trunk, self)

    def start_run(self, *args: Any) -> Any:
        """One stage's run (engine.StageRun's arguments): sharded over the cores on the CPU,
        replayed as a CUDA graph on a GPU, else plain (stage_runs.py)."""
        from .stage_runs import start_run

        return start_run(*args, runtime=self)



__all__ = ["Runtime", "RuntimeOptions", "apply_process_settings", "parse_providers"]
