"""Where and how the math runs: device, precision and the speed switches around the trunk."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import cpu_heap
from .errors import InputError

PRECISIONS = ("auto", "fp32", "bf16", "fp64")
# The trunk's dtype per precision; the pixels and the losses are fp32 (fp64 for fp64).
TRUNK_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp64": torch.float64}


def auto_precision(device: torch.device, cache: str | None) -> tuple[str, str]:
    """(precision, why) for --precision auto: bf16 on CUDA GPUs that have it; on the CPU
    whatever this CPU measured faster (precision_probe.py)."""
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return "bf16", "auto: this GPU has bf16 tensor cores"
        return "fp32", "auto: this GPU has no bf16"
    from .files import cache_dir
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


@dataclass(frozen=True)
class Runtime:
    """Speed settings; none of them changes the objective, only how it is computed."""

    device: torch.device
    precision: str = "fp32"       # resolved: fp32, bf16 (bf16 convs and Gram GEMMs; losses fp32)
                                  # or fp64 (reference runs: float rounding far below 8 bits)
    channels_last: bool = True    # NHWC convs: faster for bf16 oneDNN and cuDNN tensor cores
    cudnn_benchmark: bool = True  # autotune conv algorithms per input shape (CUDA only)
    cuda_graphs: bool = False     # CUDA: replay each stage's objective + backward as a graph
    keep_cpu_memory: bool = True  # CPU: reuse freed memory, no page faults (cpu_heap.py)
    split_batches: bool = False   # CPU: a batch's shards step side by side, one per core
    targets: str = "onnx"         # target features from ONNX Runtime ("onnx") or PyTorch ("torch")
    providers: tuple[str, ...] = ("tensorrt", "cuda", "cpu")  # ORT providers, in order of choice
    trt_fp16: bool = False        # TensorRT fp16 for targets (off: targets stay fp32-exact)
    cache: str | None = None      # cache root; None: $STYLE_PIPELINE_CACHE or the user cache dir
    cache_targets: bool = True    # keep computed targets on disk
    precision_reason: str = "set by --precision"  # one line for summaries

    @classmethod
    def create(cls, device: str = "auto", precision: str = "auto",
               channels_last: bool | None = None, cudnn_benchmark: bool = True,
               cuda_graphs: bool = True, keep_cpu_memory: bool = True,
               split_batches: bool = True, targets: str = "onnx",
               providers: str | None = None, trt_fp16: bool = False, cache: str | None = None,
               cache_targets: bool = True) -> Runtime:
        """`auto`/None resolve per device: bf16 where it is measurably faster (auto_precision);
        channels_last on CUDA and
        with bf16 (on CPU it measured slower than NCHW in fp32, faster in bf16). Like the
        cuDNN and tf32 switches, keep_cpu_memory is process-wide (cpu_heap.py)."""
        dev = resolve_device(device)
        if precision not in PRECISIONS:
            raise InputError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        # Before any torch work (the precision probe's too): a thread keeps the malloc arena
        # it first allocated in (cpu_heap.py).
        keep_cpu_memory = keep_cpu_memory and dev.type == "cpu" and cpu_heap.keep_freed_memory()
        reason = "set by --precision"
        if precision == "auto":
            precision, reason = auto_precision(dev, cache)
        if channels_last is None:
            channels_last = dev.type == "cuda" or precision == "bf16"
        if dev.type == "cuda":
            torch.backends.cudnn.benchmark = cudnn_benchmark
            # tf32 for the fp32 paths (losses, fp32 trunk and Grams): 10-bit mantissa products,
            # fp32 accumulation; well inside the tolerance the objective needs.
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
            # A bf16 Gram sums over every pixel; cuBLAS may split that sum and add the parts
            # in bf16, which would lose the fp32 accumulation losses._GramMSE relies on.
            torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = False
        cuda_graphs = cuda_graphs and dev.type == "cuda"
        split_batches = split_batches and dev.type == "cpu"
        if targets not in ("onnx", "torch"):
            raise InputError(f"targets must be onnx or torch, got {targets!r}")
        from .ort_session import parse_providers

        return cls(dev, precision, channels_last, cudnn_benchmark, cuda_graphs, keep_cpu_memory,
                   split_batches, targets, parse_providers(providers), trt_fp16, cache,
                   cache_targets, reason)

    @property
    def trunk_dtype(self) -> torch.dtype:
        return TRUNK_DTYPES[self.precision]

    @property
    def pixel_dtype(self) -> torch.dtype:
        """The optimized images' and the losses' dtype."""
        return torch.promote_types(self.trunk_dtype, torch.float32)

    def layout(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x
