"""Target precomputation: seconds per image of each ONNX Runtime provider against the PyTorch
trunk, and how far their features are from it.

Usage: python -m bench.bench_targets [--sizes 256,512,1024] [--reps 5] [--device cpu].

Targets (content features and style Grams) are computed once per image and cached, so this is
a run's start-up cost, not an iteration's. Each backend extracts the features a default job
needs (relu1_1 .. relu5_1 and relu4_2) from one image: the fp32 PyTorch trunk as the engine
holds it (`--targets torch`), and the exported ONNX model on every provider this onnxruntime
build loads for the device (CPU; on CUDA also the CUDA and TensorRT providers, with IOBinding).
"first call" includes ORT's and TensorRT's set-up for a new shape (engine builds are cached
on disk for later runs); "per image" is the median of the calls after it. "max rel. diff"
is the largest |a - b| / max |b| over the layers, against the PyTorch trunk.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable

import torch

from pipeline import Runtime, StyleParams
from pipeline.accel.runtime import PROVIDER_NAMES
from pipeline.gatys.engine import trunk_for
from pipeline.io.files import cache_dir
from pipeline.targets.builder import torch_features
from pipeline.targets.onnx_export import ensure_model
from pipeline.targets.ort_session import create_session

from .arguments import parser
from .bench_batch import timed_call

FeatureFn = Callable[[torch.Tensor, tuple[str, ...]], dict[str, torch.Tensor]]


def backends(runtime: Runtime, params: StyleParams) -> dict[str, FeatureFn]:
    """The PyTorch trunk, then one ORT session per provider that loads for the device."""
    trunk, weights = trunk_for(params, runtime)
    found: dict[str, FeatureFn] = {"PyTorch trunk (fp32)": torch_features(trunk)}
    root = cache_dir(runtime.cache)
    model, _ = ensure_model(weights, params.pooling, root / "models", params.layers)
    wanted = ["cpu"] if runtime.device.type == "cpu" else ["cpu", "cuda", "tensorrt"]
    for name in wanted:
        try:
            session = create_session(model, runtime.device, root, (name,))
        except Exception as e:  # a provider this build lacks is a row, not a crash
            print(f"(ONNX Runtime {name}: not available: {e})")
            continue
        found[f"ONNX Runtime {PROVIDER_NAMES[name]}"] = session
    return found


def timed_features(fn: FeatureFn, image: torch.Tensor, layers: tuple[str, ...]
                   ) -> tuple[float, dict[str, torch.Tensor]]:
    out: dict[str, torch.Tensor] = {}
    return timed_call(image.device, lambda: out.update(fn(image, layers))), out


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--sizes", default="256,512,1024", help="longest sides; 4:3 landscape")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    runtime = Runtime.start(args.device)
    params = StyleParams()
    layers = params.layers
    fns = backends(runtime, params)
    print(f"\n{runtime.device}, layers {', '.join(layers)}; one image per call\n")
    print("| size | backend | first call (s) | per image (s) | vs PyTorch | max rel. diff |")
    print("|---|---|---|---|---|---|")
    for size in (int(s) for s in args.sizes.split(",")):
        image = torch.rand(1, 3, size * 3 // 4, size, device=runtime.device) * 255
        reference: dict[str, torch.Tensor] = {}
        base = 0.0
        for name, fn in fns.items():
            first, out = timed_features(fn, image, layers)
            per_image = statistics.median(timed_features(fn, image, layers)[0]
                                          for _ in range(args.reps))
            if not reference:
                reference, base = out, per_image
            diff = max(((out[k].to(reference[k].device) - reference[k]).abs().max()
                        / reference[k].abs().max()).item() for k in layers)
            print(f"| {size} | {name} | {first:.3f} | {per_image:.4f} | "
                  f"{base / per_image:.2f}x | {diff:.1e} |", flush=True)


if __name__ == "__main__":
    main()
