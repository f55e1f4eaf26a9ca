import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from pipeline import Runtime, StyleJob, StyleParams, stylize_batch
from pipeline.accel.runtime import parse_providers
from pipeline.errors import InputError, SourceMissingError
from pipeline.gatys.layers import LAYER_NAMES, STYLE_LAYERS, feature_shape
from pipeline.gatys.weights import load_weights
from pipeline.io.files import cache_dir
from pipeline.io.pixels import SizedImage, to_tensor
from pipeline.targets.builder import TargetBuilder, torch_features
from pipeline.targets.cache import TargetCache, target_key
from pipeline.targets.onnx_export import DEFAULT_LAYERS, ensure_model, read_sidecar
from pipeline.targets.ort_session import create_session
from tests.conftest import assert_follows, make_painting, make_photo

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model():
    weights = load_weights("caffe")
    path, sidecar = ensure_model(weights, "max", cache_dir() / "models")
    return weights, path, sidecar


def _image(img, name="x"):
    return SizedImage(to_tensor(img), f"digest-{name}", name)


def test_export_contract_and_dynamic_shapes(model):
    weights, path, sidecar = model
    assert sidecar["outputs"] == list(DEFAULT_LAYERS) and sidecar["external_data"] is False
    assert sidecar["weights_digest"] == weights.digest and sidecar["opset"] >= 17
    assert sidecar["verification"]["max_rel_error"] <= 1e-4
    assert json.loads(path.with_suffix(".json").read_text()) == sidecar
    session = create_session(path, torch.device("cpu"), cache_dir())
    feats = session(torch.rand(2, 3, 37, 53) * 255, list(DEFAULT_LAYERS))  # odd, unseen shape
    assert feats["relu1_1"].shape == (2, 64, 37, 53)
    assert feats["relu5_1"].shape == (2, 512, 37 // 16, 53 // 16)


def test_any_layer_set_gets_its_own_verified_model_with_those_outputs():
    """neural-style accepts any layer; so do the ONNX targets (conv and pool layers too)."""
    weights = load_weights("caffe")
    layers = ("relu1_2", "conv3_2", "pool3", "relu5_2")
    path, sidecar = ensure_model(weights, "max", cache_dir() / "models", reversed(layers))
    assert sidecar["outputs"] == list(layers)  # shallowest first, whatever the order asked
    assert "-to-relu5_2-" in path.name
    assert path != ensure_model(weights, "max", cache_dir() / "models")[0]
    session = create_session(path, torch.device("cpu"), cache_dir())
    x = torch.rand(1, 3, 45, 61) * 255
    got = session(x, list(layers))
    want = weights.trunk(last_layer="relu5_2")(x, layers)
    for name in layers:
        assert got[name].shape == want[name].shape, name
        assert (got[name] - want[name]).abs().max() <= 1e-4 * want[name].abs().max(), name


def test_feature_shapes_follow_the_trunk_for_every_layer():
    trunk = load_weights("caffe").trunk(last_layer=LAYER_NAMES[-1])
    feats = trunk(torch.rand(1, 3, 53, 37) * 255, LAYER_NAMES)
    for name in LAYER_NAMES:
        assert tuple(feats[name].shape[1:]) == feature_shape(name, 53, 37), name


def test_ort_targets_equal_torch_targets(model, caplog):
    weights, path, _ = model
    trunk = weights.trunk()
    with caplog.at_level(logging.INFO, logger="pipeline"):
        session = create_session(path, torch.device("cpu"), cache_dir(),
                                 providers=parse_providers("auto"))
    assert "provider CPUExecutionProvider" in caplog.text
    ort_b = TargetBuilder(session, {"backend": "onnx"}, TargetCache(None))
    torch_b = TargetBuilder(torch_features(trunk), {"backend": "torch"}, TargetCache(None))
    content, style = _image(make_photo()), _image(make_painting(), "s")
    # Relative to each tensor's scale: another CPU's kernels sum in another order, and an
    # elementwise tolerance fails on whichever single feature lands near zero.
    for k, v in torch_b.content(content, ["relu4_2"]).items():
        got = ort_b.content(content, ["relu4_2"])[k]
        assert (got - v).abs().max() <= 1e-4 * v.abs().max(), k
    for k, v in torch_b.style(style, STYLE_LAYERS).items():
        got = ort_b.style(style, STYLE_LAYERS)[k]
        assert (got - v).abs().max() <= 1e-4 * v.abs().max(), k


def test_run_on_ort_targets_follows_the_run_on_torch_targets():
    """The same objective from either backend's targets (they agree to about 1e-5): after 8
    iterations the two final losses were 3% apart on one CPU, under 0.1% on another."""
    job = [StyleJob(make_photo(), [make_painting()])]
    params = StyleParams(size=64, iterations=8)
    runs = {}
    for backend in ("onnx", "torch"):
        rt = Runtime.create("cpu", "fp32", channels_last=False, targets=backend)
        runs[backend] = stylize_batch(job, params, rt, trace_every=1)[0]
    assert_follows(runs["onnx"], runs["torch"])


def test_changing_any_input_changes_the_key():
    base = dict(kind="style", image_digest="abc", size=(64, 48),
                model={"backend": "onnx", "digest": "m1", "normalization": "caffe",
                       "pooling": "max"}, layers=("relu1_1", "relu2_1"))
    key = target_key(**base)
    assert key == target_key(**base)
    changes = [{"kind": "content"}, {"image_digest": "abd"}, {"size": (64, 47)},
               {"layers": ("relu1_1",)}, {"layers": ("relu2_1", "relu1_1")}]
    changes += [{"model": {**base["model"], field: "other"}} for field in base["model"]]
    keys = {target_key(**{**base, **change}) for change in changes}
    assert key not in keys and len(keys) == len(changes)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "flip"])
def test_corrupt_cache_entry_is_recomputed_never_used(tmp_path, damage, caplog):
    calls = []

    def compute():
        calls.append(1)
        return {"relu1_1": torch.arange(12.0).reshape(3, 4)}

    TargetCache(tmp_path).get("k" * 64, compute, "style x")
    (entry,) = tmp_path.rglob("*.safetensors")
    data = bytearray(entry.read_bytes())
    if damage == "truncate":
        data = data[: len(data) - 10]
    elif damage == "garbage":
        data = bytearray(b"\x00" * len(data))
    else:
        data[-5] ^= 0xFF  # a flipped bit in the tensor data: caught by the checksum
    entry.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="pipeline"):
        out = TargetCache(tmp_path).get("k" * 64, compute, "style x")
    assert "corrupt" in caplog.text and len(calls) == 2
    torch.testing.assert_close(out["relu1_1"], torch.arange(12.0).reshape(3, 4))
    assert TargetCache(tmp_path).get("k" * 64, lambda: pytest.fail("recomputed"), "x")


def test_second_run_hits_the_cache(tmp_path, caplog):
    """A second run reads the targets back and starts no ONNX Runtime session."""
    photo, painting = tmp_path / "p.png", tmp_path / "s.png"
    make_photo().save(photo)
    make_painting().save(painting)
    params = StyleParams(size=48, iterations=1)
    rt = Runtime.create("cpu", "fp32", channels_last=False, cache=str(tmp_path / "c"))
    with caplog.at_level(logging.INFO, logger="pipeline"):
        stylize_batch([StyleJob(photo, [painting])], params, rt)
    assert caplog.text.count("computed in") == 2
    entries = list((tmp_path / "c" / "targets").rglob("*.safetensors"))
    assert len(entries) == 2
    # A new process-level cache (as in a second run) reads them back from disk.
    from pipeline.targets.builder import builder_for

    builder_for.cache_clear()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="pipeline"):
        stylize_batch([StyleJob(photo, [painting])], params, rt)
    assert caplog.text.count("cache hit") == 2 and "computed" not in caplog.text
    assert "provider" not in caplog.text  # no session: every target was cached


def test_two_processes_export_at_once(tmp_path):
    script = textwrap.dedent("""
        import logging, sys
        from pathlib import Path
        logging.basicConfig(level=logging.INFO, format="%(message)s")
        from pipeline.targets.onnx_export import ensure_model
        from pipeline.gatys.weights import load_weights
        cache = Path(sys.argv[1])
        path, sidecar = ensure_model(load_weights("caffe"), "avg", cache / "models")
        print("MODEL", path, sidecar["model_sha256"])
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert sum(o.count("exported vgg19") for o in outs) == 1, outs
    models = [line.split()[1:] for o in outs for line in o.splitlines() if line.startswith("MODEL")]
    assert len(models) == 2 and models[0] == models[1]
    path = Path(models[0][0])
    assert read_sidecar(path) is not None
    assert sorted(p.suffix for p in path.parent.iterdir()) == [".json", ".lock", ".onnx"]


def test_a_session_hands_back_the_memory_of_a_large_image(model):
    """ONNX Runtime's CPU arena would keep a large image's buffers for the session's life (a
    worker's), out of reach of the optimization after it."""
    script = textwrap.dedent("""
        import re, sys, torch
        from pathlib import Path
        from pipeline.targets.ort_session import create_session
        from pipeline.targets.onnx_export import DEFAULT_LAYERS
        def rss():
            status = Path("/proc/self/status").read_text()
            return int(re.search(r"VmRSS:\\s+(\\d+)", status).group(1)) * 1024
        session = create_session(Path(sys.argv[1]), torch.device("cpu"), Path(sys.argv[2]))
        session(torch.rand(1, 3, 32, 32) * 255, list(DEFAULT_LAYERS))
        image, before = torch.rand(1, 3, 768, 1024) * 255, rss()
        feats = session(image, list(DEFAULT_LAYERS))
        del feats
        print("GROWTH", rss() - before)
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", script, str(model[1]), str(cache_dir())],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    growth = int(out.stdout.split("GROWTH")[1])
    assert growth < 0.4e9, growth  # the arena: 0.8e9


def test_a_provider_that_fails_to_load_is_a_clear_error(monkeypatch, tmp_path):
    """ORT quietly runs on its CPU provider when, say, CUDA's libraries are missing; asked for
    CUDA only, that is an error naming what loaded, not a silent CPU run (or a crash)."""
    import onnxruntime as ort

    class CpuOnlySession:
        def __init__(self, *args, **kwargs):
            pass

        def get_providers(self):
            return ["CPUExecutionProvider"]

    monkeypatch.setattr(ort, "get_available_providers",
                        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(ort, "InferenceSession", CpuOnlySession)
    with pytest.raises(SourceMissingError, match=r"none of the providers \['cuda'\] loaded"):
        create_session(tmp_path / "m.onnx", torch.device("cuda"), tmp_path, ("cuda",))
    session = create_session(tmp_path / "m.onnx", torch.device("cuda"), tmp_path, ("cuda", "cpu"))
    assert (session.provider, session.device.type) == ("cpu", "cpu")


def test_provider_names_are_checked():
    assert parse_providers("CUDAExecutionProvider,cpu") == ("cuda", "cpu")
    assert parse_providers(None) == ("tensorrt", "cuda", "cpu")
    with pytest.raises(InputError, match="unknown ONNX Runtime providers"):
        parse_providers("tpu")
