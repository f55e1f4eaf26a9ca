"""The runtime's settings resolved for one device (Settings), from what the user asks
(options.py). Plain records: the modules that make the math fast take a Settings, and
runtime.py, which resolves them and hands the engine its trunk and runs, imports those
modules, never the other way round."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from .options import DEFAULT_PROVIDERS

# The trunk's dtype per precision; the pixels and the losses are fp32 (fp64 for fp64).
TRUNK_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp64": torch.float64}


@dataclass(frozen=True)
class Settings:
    """Resolved settings for one device; none of them changes the objective, only how it is
    computed. Hashable: trunks and compute trunks are cached per runtime."""

    device: torch.device
    precision: str = "fp32"       # resolved: fp32, bf16 (bf16 convs and Gram GEMMs; losses fp32)
                                  # or fp64 (reference runs: float rounding far below 8 bits)
    channels_last: bool = True    # NHWC convs: faster for bf16 oneDNN and cuDNN tensor cores
    winograd: str = "off"         # CPU fp32 3x3 convs by Winograd: off, on, or auto (measured)
    cuda_graphs: bool = False     # CUDA: replay each stage's iteration as a graph
    keep_cpu_memory: bool = False  # CPU: the heap keeps freed memory; release it after a batch
    split_batches: bool = False   # CPU: a batch's shards step side by side, one per core
    history_left: bool = True     # L-BFGS's history as the left factor of its products
                                  # (CPU: the faster side, measured; history_probe.py)
    block_size: int = 0           # objective by blocks of this side; 0: when it does not fit
    targets: str = "onnx"         # target features from ONNX Runtime ("onnx") or PyTorch ("torch")
    providers: tuple[str, ...] = DEFAULT_PROVIDERS  # ORT providers, in order of choice
    trt_fp16: bool = False        # TensorRT fp16 for targets (off: targets stay fp32-exact)
    cache: str | None = None      # cache root; None: $STYLE_PIPELINE_CACHE or the user cache dir
    cache_targets: bool = True    # keep computed targets on disk
    precision_reason: str = "set by --precision"  # one line for summaries

    @property
    def numerics(self) -> str:
        """Why this precision, and the convolutions' algorithm where not direct: one line for
        summaries."""
        convs = {"on": "; 3x3 convs by Winograd",
                 "auto": "; 3x3 convs by Winograd where measured faster"}.get(self.winograd, "")
        return self.precision_reason + convs

    @property
    def trunk_dtype(self) -> torch.dtype:
        return TRUNK_DTYPES[self.precision]

    @property
    def pixel_dtype(self) -> torch.dtype:
        """The optimized images' and the losses' dtype."""
        return torch.promote_types(self.trunk_dtype, torch.float32)

    def layout(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def widened(self) -> Settings:
        """These settings with the trunk in fp32 (fp64 stays) and direct convolutions: final
        losses are reported in it."""
        return replace(self, precision="fp64" if self.precision == "fp64" else "fp32",
                       winograd="off")


__all__ = ["Settings"]
