"""ONNX Runtime sessions for target precomputation: provider choice and feature extraction.

Providers are tried in the order TensorRT -> CUDA -> CPU; only those this onnxruntime build
has are asked for, and `session.get_providers()` tells which ones actually loaded (ORT quietly
drops a provider whose libraries are missing). On CUDA, inputs and outputs are bound with
IOBinding to torch-allocated GPU buffers, so features never visit host memory.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..accel.runtime import DEFAULT_PROVIDERS, PROVIDER_NAMES
from ..errors import SourceMissingError
from ..gatys.layers import feature_shape

log = logging.getLogger("pipeline.targets")

def _provider_options(name: str, device: torch.device, cache: Path, trt_fp16: bool) -> dict:
    index = device.index or 0
    if name == "tensorrt":
        engines = cache / "trt"
        engines.mkdir(parents=True, exist_ok=True)
        return {"device_id": index, "trt_engine_cache_enable": True,
                "trt_engine_cache_path": str(engines), "trt_timing_cache_enable": True,
                "trt_timing_cache_path": str(engines), "trt_fp16_enable": trt_fp16,
                # One optimization profile covering every image we accept up to 2048 px.
                "trt_profile_min_shapes": "image:1x3x16x16",
                "trt_profile_opt_shapes": "image:1x3x512x512",
                "trt_profile_max_shapes": "image:8x3x2048x2048"}
    if name == "cuda":
        return {"device_id": index}
    return {}


@dataclass
class FeatureSession:
    """An ORT session over the exported trunk, and where its outputs live."""

    session: object
    provider: str            # the first provider that actually loaded
    device: torch.device     # where returned features live

    def __call__(self, images: Tensor, layers: Sequence[str]) -> dict[str, Tensor]:
        """fp32 features of [N, 3, H, W] images (0-255 RGB) at `layers`."""
        if self.device.type == "cuda":
            return self._run_bound(images, layers)
        outs = self.session.run(list(layers), {"image": images.float().cpu().numpy()})
        return {k: torch.from_numpy(v) for k, v in zip(layers, outs, strict=True)}

    def _run_bound(self, images: Tensor, layers: Sequence[str]) -> dict[str, Tensor]:
        x = images.to(self.device, torch.float32).contiguous()
        n, _, h, w = x.shape
        index = self.device.index or 0
        binding = self.session.io_binding()
        binding.bind_input("image", "cuda", index, np.float32, tuple(x.shape), x.data_ptr())
        outs = {}
        for name in layers:
            out = torch.empty((n, *feature_shape(name, h, w)), device=self.device)
            binding.bind_output(name, "cuda", index, np.float32, tuple(out.shape),
                                out.data_ptr())
            outs[name] = out
        torch.cuda.current_stream(self.device).synchronize()  # x is ready before ORT reads it
        self.session.run_with_iobinding(binding)
        return outs


def create_session(model: Path, device: torch.device, cache: Path,
                   providers: Sequence[str] = DEFAULT_PROVIDERS, trt_fp16: bool = False
                   ) -> FeatureSession:
    try:
        import onnxruntime as ort
    except ImportError:
        raise SourceMissingError("ONNX Runtime is not installed: pip install "
                                 "'style-pipeline[cpu]' (or [gpu] on CUDA machines)") from None
    available = set(ort.get_available_providers())
    wanted = [p for p in providers if PROVIDER_NAMES[p] in available]
    if device.type == "cpu":
        wanted = [p for p in wanted if p == "cpu"]
    if not wanted:
        raise SourceMissingError(f"none of the providers {list(providers)} is available in this "
                                 f"onnxruntime build (it has {sorted(available)})")
    options = ort.SessionOptions()
    options.log_severity_level = 3  # ORT's warnings about dropped providers: we log our own
    # ORT's CPU arena keeps its peak for the session's life, the worker's: GiBs after one
    # 4096 px image, out of reach of the optimization that follows. Without it ORT's buffers
    # go back to the process heap, where PyTorch reuses them (cpu_heap.py keeps that heap, so
    # targets are computed as fast).
    options.enable_cpu_mem_arena = False
    session = ort.InferenceSession(
        str(model), sess_options=options,
        providers=[(PROVIDER_NAMES[p], _provider_options(p, device, cache, trt_fp16))
                   for p in wanted])
    loaded = session.get_providers()
    usable = [p for p in wanted if PROVIDER_NAMES[p] in loaded]
    if not usable:  # ORT drops a provider whose libraries fail to load and runs on its CPU one
        raise SourceMissingError(f"none of the providers {wanted} loaded (ONNX Runtime fell back "
                                 f"to {loaded}); check the CUDA/TensorRT libraries, or add cpu")
    provider = usable[0]
    dropped = [p for p in wanted if PROVIDER_NAMES[p] not in loaded]
    log.info("targets: ONNX Runtime provider %s%s", PROVIDER_NAMES[provider],
             f" ({', '.join(dropped)} failed to load)" if dropped else "")
    out_device = device if provider in ("cuda", "tensorrt") else torch.device("cpu")
    return FeatureSession(session, provider, out_device)
