"""Analytic FLOPs of one iteration: VGG19 trunk forward + backward to the input, Grams, losses;
also the device's measured matmul rates (bf16, and fp32 or tf32) and the floor they give an
iteration.

Weights are frozen, so the backward pass needs only input gradients: one conv-sized GEMM per
conv, the same as its forward. Elementwise ops (ReLU, pooling, losses) are counted as 0; they
are memory-bound and well under 1% of the GEMM work.

Usage: python -m bench.flops [--device cpu|cuda]
"""

from __future__ import annotations

import statistics
import time

import torch

from pipeline.accel.precision_probe import native_bf16
from pipeline.gatys.layers import LAYER_NAMES, STYLE_LAYERS

from .arguments import parser

_CHANNELS = {1: 64, 2: 128, 3: 256, 4: 512, 5: 512}
SIZES = ((256, 192), (256, 256), (512, 384), (512, 512), (1024, 768), (1024, 1024))


def iteration_flops(height: int, width: int, last_layer: str = "relu5_1",
                    style_layers: tuple[str, ...] = STYLE_LAYERS) -> dict[str, float]:
    h, w, c_in = height, width, 3
    conv = 0.0
    grams = 0.0
    for name in LAYER_NAMES[: LAYER_NAMES.index(last_layer) + 1]:
        if name.startswith("conv"):
            c_out = _CHANNELS[int(name[4])]
            conv += 2.0 * c_in * c_out * 9 * h * w
            c_in = c_out
        elif name.startswith("pool"):
            h, w = h // 2, w // 2
        elif name in style_layers:
            # G = F F^T forward, and its backward dL/dF = 2 dL/dG F: two C x C x HW GEMMs.
            grams += 2 * (2.0 * c_in * c_in * h * w)
    return {"forward": conv, "backward": conv, "grams": grams, "total": 2 * conv + grams}


def matmul_tflops(device: torch.device, dtype: torch.dtype) -> float:
    """Median TFLOP/s of an n^3 product on random data (zeros run faster than real data):
    n = 8192 on a GPU, timed by CUDA events (fp32 as tf32 when torch allows it; the runtime
    does), 4096 on the CPU (a second per product), timed by the clock."""
    cuda = device.type == "cuda"
    n, warmup, reps = (8192, 3, 20) if cuda else (4096, 1, 5)
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))

    def seconds() -> float:
        if not cuda:
            start = time.perf_counter()
            a @ b
            return time.perf_counter() - start
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        a @ b
        end.record()
        end.synchronize()
        return begin.elapsed_time(end) / 1e3

    for _ in range(warmup):
        a @ b
    return 2 * n**3 / statistics.median(seconds() for _ in range(reps)) / 1e12


def gpu_rates(device: torch.device) -> dict[str, float]:
    """Measured dense matmul TFLOP/s: bf16, and fp32 as tf32 (what our fp32 paths get)."""
    torch.backends.cuda.matmul.allow_tf32 = True
    return {"bf16": matmul_tflops(device, torch.bfloat16),
            "tf32": matmul_tflops(device, torch.float32)}


def cpu_rates() -> dict[str, float]:
    """Measured dense matmul TFLOP/s on the CPU at its thread count: fp32, and bf16 where the
    CPU has native bf16 dot products (AVX512-BF16 or AMX; emulated, one product takes
    minutes, and no run uses it: --precision auto picks fp32 there)."""
    cpu = torch.device("cpu")
    bf16 = {"bf16": matmul_tflops(cpu, torch.bfloat16)} if native_bf16() else {}
    return {**bf16, "fp32": matmul_tflops(cpu, torch.float32)}


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--device", default="cpu", help="cpu or cuda: whose matmul rates to measure")
    args = ap.parse_args()
    cuda = args.device.startswith("cuda")
    rates = gpu_rates(torch.device(args.device)) if cuda else cpu_rates()
    where = torch.cuda.get_device_name(args.device) if cuda else "CPU"
    print(f"{where}: measured matmul " + ", ".join(f"{k} {v:.3g} TFLOP/s"
                                               for k, v in rates.items()) + "\n")
    print("| image (w x h) | forward GFLOP | backward GFLOP | Grams GFLOP | total GFLOP / "
          "iteration |" + "".join(f" floor at {k} rate (ms) |" for k in rates))
    print("|---|---|---|---|---|" + "---|" * len(rates))
    for w, h in SIZES:
        f = iteration_flops(h, w)
        print(f"| {w}x{h} | {f['forward'] / 1e9:.1f} | {f['backward'] / 1e9:.1f} | "
              f"{f['grams'] / 1e9:.1f} | {f['total'] / 1e9:.1f} |"
              + "".join(f" {f['total'] / (r * 1e12) * 1e3:.3f} |" for r in rates.values()))


if __name__ == "__main__":
    main()
