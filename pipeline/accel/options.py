"""What the user asks of the runtime (RuntimeOptions), before it is resolved for a device
(settings.py): declarations only, so that the CLI, manifests and `--help` are made without
importing torch."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import InputError
from ..io.files import CACHE_ENV, absolute_cache
from ..options import check, option

PRECISIONS = ("auto", "fp32", "bf16", "fp64")
PROVIDER_NAMES = {"tensorrt": "TensorrtExecutionProvider", "cuda": "CUDAExecutionProvider",
                  "cpu": "CPUExecutionProvider"}
DEFAULT_PROVIDERS = ("tensorrt", "cuda", "cpu")
MIN_BLOCK_SIZE = 16  # the stride of relu5_1: smaller blocks were rounded up to it, silently


@dataclass(frozen=True)
class RuntimeOptions:
    """The user's speed and placement settings, before they are resolved for a device."""

    precision: str = option(
        "auto", "Trunk precision. auto: bf16 on CUDA GPUs that have "
        "it; on the CPU bf16 where the CPU has native bf16 dot products (AVX512-BF16 or AMX) "
        "and a one-second probe, cached per machine, measures it faster; else fp32. bf16 "
        "covers the convolutions and the Gram GEMMs (fp32 accumulation); the first conv reads "
        "the pixels in fp32 and the losses are always fp32. fp64: reference runs (slow).",
        choices=PRECISIONS)
    channels_last: bool | None = option(
        None, "NHWC memory layout for the trunk: auto (on for CUDA and bf16), on or off.",
        words={"auto": None, "on": True, "off": False})
    winograd: bool | None = option(
        None, "CPU, fp32 trunk: 3x3 convolutions by Winograd's minimal filtering (NNPACK, "
        "about 5x fewer multiplies; rounding about 1e-5 relative per layer). auto: each "
        "layer's forward and backward where a probe at the first image of each size, cached "
        "per machine, measures it faster than the direct convolution, if a whole pass of the "
        "trunk with those measures faster too; on: every layer; off: none. Not used with "
        "bf16, fp64, channels_last or on a GPU.",
        words={"auto": None, "on": True, "off": False})
    cudnn_benchmark: bool = option(
        True, "Let cuDNN autotune conv algorithms per image size (CUDA only).")
    cuda_graphs: bool = option(
        True, "CUDA: capture each batch's iteration once as a CUDA graph and replay it (with "
        "L-BFGS the whole iteration, objective, gradient and step; with Adam the objective "
        "and gradient): a few hundred kernels launched at once instead of one by one from "
        "Python, and no host round trip per iteration.")
    keep_cpu_memory: bool = option(
        True, "CPU: keep freed memory in the process for the next iteration instead of "
        "returning it to the kernel (no page faults on large activations; returned after each "
        "batch).")
    split_batches: bool = option(
        True, "CPU: run a batch as one shard per core, stepped side by side with one thread "
        "each, instead of one batch whose every op is split over the cores (faster for "
        "batches of 2+).")
    block_size: int = option(
        0, "Compute the objective by blocks of at most this many pixels square, with exact "
        "whole-image losses and gradients (no seams): memory then grows with the block, not the "
        "image. 0 = auto: whole images when they fit in memory, else the largest blocks that "
        "do (and, if even 512 px blocks do not fit, a shorter L-BFGS history).")
    targets: str = option(
        "onnx", "Compute content/style targets with onnx (ONNX Runtime over the exported "
        "trunk) or torch.", choices=("onnx", "torch"))
    providers: str = option(
        "auto", "ONNX Runtime providers in order of choice, e.g. cuda,cpu. auto = "
        "tensorrt,cuda,cpu, keeping those that load.")
    trt_fp16: bool = option(False, "TensorRT fp16 for targets (default fp32).")
    cache: str | None = option(
        None, "Cache root for ONNX models, TensorRT engines, targets, video flows, "
        "measured hardware defaults, input files' digests and the copies of input objects "
        "(`pipeline cache info` lists them); a URL (s3://bucket/cache) shares models, "
        "targets, probes and what is known of input objects among machines, each working "
        "in its own copy.  [default: the user cache dir]", flags=("--cache-dir",),
        envvar=CACHE_ENV)
    cache_targets: bool = option(True, "Keep computed targets (and video flows) in the cache.")

    def __post_init__(self) -> None:
        # A relative cache is the command's folder's: a worker or Ray actor starts elsewhere.
        if self.cache:
            object.__setattr__(self, "cache", absolute_cache(self.cache))

    def validate(self) -> tuple[str, ...]:
        """InputError naming the first bad setting, before any work; the providers parsed."""
        check(self)
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
