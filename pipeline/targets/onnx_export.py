"""Trace the VGG19 trunk to ONNX, with the layers a job asks for as outputs, and verify it
against PyTorch.

One model per weights, pooling and layer set (every layer of the trunk's table may be asked
for: conv, relu or pool), truncated at the deepest of them. ONNX Runtime runs the whole graph
whatever outputs are requested, so a model of exactly the needed layers costs no more than the
job needs; the default layers (Gatys et al.'s relu1_1..relu5_1 and relu4_2) make one model.

Input contract: one input `image`, float32 [N, 3, H, W], RGB on a 0-255 scale (the same
images the optimizer works on); the weight source's normalization is inside the graph.
Outputs: one float32 tensor per layer, named after it, [N, C, H/2^k, W/2^k] (floor division, as
the pools do; vgg.feature_shape). N, H and W are dynamic: the export traces a batch of 2 with
explicit ranges so the exporter cannot specialize any of them to the example's value. The
weights (52 MB through conv5_1) are stored inside the .onnx file, not as external data.
"""

from __future__ import annotations

import hashlib
import json
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import SourceMissingError
from ..gatys.layers import CONTENT_LAYERS, STYLE_LAYERS, in_order
from ..gatys.vgg import VGG19Trunk
from ..gatys.weights import WeightSet
from ..io.files import atomic_path, atomic_write_bytes, file_digest
from ..io.mirror import fetch_missing

log = logging.getLogger("pipeline.export")

DEFAULT_LAYERS = in_order(STYLE_LAYERS + CONTENT_LAYERS)
OPSET = 18
MAX_REL_ERROR = 1e-4
INPUT_CONTRACT = ("image: float32 [N, 3, H, W], RGB, 0-255 scale; H, W >= 16; "
                  "normalization of the weight source is applied inside the graph")


class ExportError(RuntimeError):
    """The exported model failed its own verification; nothing was written to the cache."""


class TrunkOutputs(nn.Module):
    """The trunk with a fixed tuple of outputs, in the order given, for tracing."""

    def __init__(self, trunk: VGG19Trunk, layers: tuple[str, ...]):
        super().__init__()
        self.trunk, self.outputs = trunk, layers

    def forward(self, image: Tensor) -> tuple[Tensor, ...]:
        feats = self.trunk(image, self.outputs)
        return tuple(feats[k] for k in self.outputs)


def model_stem(weights: WeightSet, pooling: str, layers: tuple[str, ...],
               opset: int = OPSET) -> str:
    """Names the layer set by its deepest layer and a hash of the whole set."""
    tag = hashlib.sha256(",".join(layers).encode()).hexdigest()[:8]
    return (f"vgg19-{weights.normalization}-{weights.digest[:16]}-{pooling}-to-{layers[-1]}-"
            f"{tag}-opset{opset}")


def _verification_inputs() -> list[Tensor]:
    """Random and real-looking images, two sizes, batch 1 and 3."""
    from ..io.examples import landscape, swirls
    from ..io.pixels import to_tensor

    gen = torch.Generator().manual_seed(0)
    real = [to_tensor(img) for img in (landscape(72, 56), swirls(72, 56), landscape(72, 56))]
    return [torch.rand(1, 3, 48, 64, generator=gen) * 255,
            torch.rand(3, 3, 80, 56, generator=gen) * 255,
            real[0][None],
            torch.stack(real)]


def verify(path: Path, trunk: VGG19Trunk, layers: tuple[str, ...]) -> float:
    """Largest relative error (max |ort - torch| / max |torch|, per output) over the
    verification inputs, on ONNX Runtime's CPU provider."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = 0.0
    for x in _verification_inputs():
        got = session.run(list(layers), {"image": x.numpy()})
        with torch.no_grad():
            want = trunk(x, layers)
        for name, g in zip(layers, got, strict=True):
            w = want[name].numpy()
            if g.shape != w.shape:
                raise ExportError(f"{name}: ONNX shape {g.shape} != PyTorch {w.shape} for input "
                                  f"{tuple(x.shape)}")
            worst = max(worst, float(np.abs(g - w).max() / max(np.abs(w).max(), 1e-12)))
    return worst


def export_onnx(weights: WeightSet, pooling: str, dest: Path,
                layers: tuple[str, ...] = DEFAULT_LAYERS, opset: int = OPSET) -> dict:
    """Export, check, verify, then atomically place `dest` and its sidecar `dest.json`.
    onnx is imported here: a worker that finds the model cached never needs it."""
    import onnx

    trunk = weights.trunk(pooling=pooling, last_layer=layers[-1]).eval()
    batch = torch.export.Dim("batch", min=1, max=4096)
    height = torch.export.Dim("height", min=16, max=16384)
    width = torch.export.Dim("width", min=16, max=16384)
    example = torch.rand(2, 3, 64, 48) * 255
    with atomic_path(dest) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(TrunkOutputs(trunk, layers), (example,), str(tmp),
                          input_names=["image"], output_names=list(layers), opset_version=opset,
                          dynamic_shapes={"image": {0: batch, 2: height, 3: width}},
                          dynamo=True, external_data=False, verbose=False)
        model = onnx.load(str(tmp))
        onnx.checker.check_model(model)
        dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
        if dims != ["batch", 3, "height", "width"]:
            raise ExportError(f"exported input has pinned dimensions {dims}")
        error = verify(tmp, trunk, layers)
        if error > MAX_REL_ERROR:
            raise ExportError(f"ONNX Runtime differs from PyTorch by {error:.2e} (relative), "
                              f"above {MAX_REL_ERROR:.0e}")
        sha = file_digest(tmp)
    sidecar = {
        "model_sha256": sha, "weights_source": weights.source,
        "weights_digest": weights.digest, "normalization": weights.normalization,
        "pooling": pooling, "outputs": list(layers), "opset": opset,
        "input": INPUT_CONTRACT, "dynamic_dims": ["batch", "height", "width"],
        "external_data": False, "torch": torch.__version__, "onnx": onnx.__version__,
        "verification": {"max_rel_error": error, "limit": MAX_REL_ERROR,
                         "inputs": "random + drawn images, 48x64 and 80x56 and 56x72, "
                                   "batch 1 and 3, ONNX Runtime CPU vs PyTorch fp32"},
    }
    atomic_write_bytes(dest.with_suffix(".json"), json.dumps(sidecar, indent=2).encode())
    log.info("exported %s (max relative error %.1e vs PyTorch)", dest.name, error)
    return sidecar


def read_sidecar(path: Path) -> dict | None:
    """The sidecar of a complete, intact model, or None."""
    meta = path.with_suffix(".json")
    for part in (path, meta):  # a cache in object storage: another machine's export
        fetch_missing(part)
    if not (path.is_file() and meta.is_file()):
        return None
    try:
        sidecar = json.loads(meta.read_text())
    except (OSError, ValueError):
        return None
    return sidecar if sidecar.get("model_sha256") == file_digest(path) else None


def ensure_model(weights: WeightSet, pooling: str, models_dir: Path,
                 layers: Sequence[str] = DEFAULT_LAYERS, opset: int = OPSET,
                 force: bool = False) -> tuple[Path, dict]:
    """The cached model for these weights, pooling and layers, exporting it first if needed.
    Concurrent callers serialize on a lock file; the loser of the race finds the winner's
    model."""
    from filelock import FileLock

    layers = in_order(layers)
    path = models_dir / f"{model_stem(weights, pooling, layers, opset)}.onnx"
    if not force and (sidecar := read_sidecar(path)) is not None:
        return path, sidecar
    models_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock", timeout=1800):
        if not force and (sidecar := read_sidecar(path)) is not None:
            return path, sidecar
        log.info("exporting %s to ONNX (once per weights and pooling)...", path.name)
        try:
            return path, export_onnx(weights, pooling, path, layers, opset)
        except ImportError as e:
            raise SourceMissingError(f"ONNX export needs {e.name}: pip install "
                                     "'style-pipeline[cpu]' (or [gpu])") from None
