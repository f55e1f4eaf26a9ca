"""Analytic FLOPs of one iteration: VGG19 trunk forward + backward to the input, Grams, losses.

Weights are frozen, so the backward pass needs only input gradients: one conv-sized GEMM per
conv, the same as its forward. Elementwise ops (ReLU, pooling, losses) are counted as 0; they
are memory-bound and well under 1% of the GEMM work.
"""

from __future__ import annotations

from pipeline.vgg import LAYER_NAMES, STYLE_LAYERS

_CHANNELS = {1: 64, 2: 128, 3: 256, 4: 512, 5: 512}


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


def main() -> None:
    print("| image (w x h) | forward GFLOP | backward GFLOP | Grams GFLOP | total GFLOP / "
          "iteration |")
    print("|---|---|---|---|---|")
    for w, h in ((256, 192), (256, 256), (512, 384), (512, 512), (1024, 768), (1024, 1024)):
        f = iteration_flops(h, w)
        print(f"| {w}x{h} | {f['forward'] / 1e9:.1f} | {f['backward'] / 1e9:.1f} | "
              f"{f['grams'] / 1e9:.1f} | {f['total'] / 1e9:.1f} |")


if __name__ == "__main__":
    main()
