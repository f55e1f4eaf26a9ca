import platform
import re

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.io.images import read_metadata
from tests.conftest import make_painting

runner = CliRunner()


def test_help_documents_every_option():
    result = runner.invoke(app, ["stylize", "--help"], terminal_width=200)
    assert result.exit_code == 0
    for option in ("--size", "--iterations", "--optimizer", "--content-weight", "--style-weight",
                   "--style-blend", "--tv-weight", "--init", "--seed", "--style-scale",
                   "--preserve-colors", "--pooling", "--device", "--precision", "--weights",
                   "--channels-last", "[default: 512]"):
        assert option in result.output, option


def test_version_says_ours_as_installed_and_what_computes_for_it():
    """One version, pipeline/version.py's: the installed package's metadata reads it too."""
    from importlib import metadata

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    ours = metadata.version("style-pipeline")
    torch, python = metadata.version("torch"), platform.python_version()
    assert re.fullmatch(rf"style-pipeline {re.escape(ours)} \(torch {re.escape(torch)}, "
                        rf"onnxruntime(-gpu)? [0-9][^,]*, Python {re.escape(python)}\)\n",
                        result.output), result.output
    from pipeline.version import __version__
    assert __version__ == ours


def test_cache_clear_help_names_exactly_the_parts_there_are():
    from pipeline.io.cache_entries import CACHE_PARTS

    result = runner.invoke(app, ["cache", "clear", "--help"], terminal_width=200)
    assert result.exit_code == 0
    assert f"Parts to empty: {', '.join(CACHE_PARTS)}." in result.output


def test_stylize_end_to_end(photo_path, painting_path, tmp_path):
    out = tmp_path / "out" / "result.png"
    result = runner.invoke(app, ["stylize", str(photo_path), str(painting_path), "-o", str(out),
                                 "--size", "48", "--iterations", "3", "--device", "cpu",
                                 "--precision", "fp32", "--seed", "7"])
    assert result.exit_code == 0, result.output
    # Not a terminal: no bar, a plain line (at most a minute apart) and one at the end.
    assert "━" not in result.output
    assert f"{photo_path.name} 3/3 iterations, loss " in result.output, result.output
    meta = read_metadata(out)
    assert meta["params"]["size"] == 48 and meta["params"]["seed"] == 7
    assert meta["precision"] == "fp32" and len(meta["weights_digest"]) == 64


def test_two_styles_and_jpeg(photo_path, painting_path, tmp_path):
    out = tmp_path / "r.jpg"
    result = runner.invoke(app, ["stylize", str(photo_path), str(painting_path), str(photo_path),
                                 "-o", str(out), "--size", "32", "--iterations", "1",
                                 "--style-blend", "3,1", "--device", "cpu", "-q"])
    assert result.exit_code == 0, result.output
    assert read_metadata(out)["params"]["style_blend"] == [3.0, 1.0]


def test_bad_input_is_one_line_with_exit_code_2(photo_path, painting_path, tmp_path):
    cases = [
        ([str(tmp_path / "missing.png"), str(painting_path), "-o", str(tmp_path / "o.png")],
         "missing.png: no such image file"),
        ([str(photo_path), str(painting_path), "-o", str(tmp_path / "o.bmp")],
         "output must end in"),
        ([str(photo_path), str(painting_path), "-o", str(tmp_path / "o.png"), "--tv-weight",
          "nan"], "tv_weight must be a finite number"),
        ([str(photo_path), str(painting_path), "-o", str(tmp_path / "o.png"), "--device",
          "tpu"], "unknown device"),
        ([str(photo_path), str(painting_path), "-o", str(tmp_path / "o.png"), "--style-blend",
          "abc"], "--style-blend 'abc': not a number: 'abc'"),
    ]
    for args, message in cases:
        result = runner.invoke(app, ["stylize", *args, "--size", "32", "--iterations", "1"])
        assert result.exit_code == 2, (args, result.output)
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert len(lines) == 1 and message in lines[0], result.output
    assert not (tmp_path / "o.png").exists()


def test_export_and_cache_commands(tmp_path):
    from pipeline.io.files import cache_dir

    out = tmp_path / "model.onnx"
    result = runner.invoke(app, ["export", "-o", str(out)], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "max relative error" in result.output and out.stat().st_size > 40e6
    assert out.with_suffix(".json").is_file()

    cache = tmp_path / "cache"
    ours = [cache / "targets" / "ab" / f"ab{'0' * 62}.safetensors",
            cache / "models" / f"vgg19-caffe-{'1' * 16}-max-opset18.onnx",
            cache / "digests" / "cd" / f"cd{'2' * 62}.sha256",
            cache / "digests" / f"{'3' * 64}.sha256"]  # flat, as entries were written once
    foreign = [cache / "models" / "my_model.ckpt", cache / "targets" / "ab" / "notes.txt",
               cache / "trt" / "vgg19.safetensors", cache / "digests" / "cd" / "mine.sha256"]
    for path in ours + foreign:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"1234")
    result = runner.invoke(app, ["cache", "info", "--cache-dir", str(cache)], terminal_width=200)
    assert result.exit_code == 0 and "targets" in result.output and "ONNX models" in result.output
    result = runner.invoke(app, ["cache", "clear", "targets", "--cache-dir", str(cache)])
    assert result.exit_code == 0 and not ours[0].exists() and all(p.exists() for p in ours[1:])
    result = runner.invoke(app, ["cache", "clear", "--cache-dir", str(cache)])
    assert result.exit_code == 0 and not any(p.exists() for p in ours)
    assert all(p.read_bytes() == b"1234" for p in foreign)  # a user's files are not ours
    assert "not written by style-pipeline left alone" in result.output
    result = runner.invoke(app, ["cache", "clear", "bogus", "--cache-dir", str(cache)])
    assert result.exit_code == 2 and "unknown cache part" in result.output
    assert (cache_dir() / "models").is_dir()  # the shared test cache is untouched


def test_cache_clear_unused_for_days_goes_by_last_use(tmp_path, photo_path, painting_path):
    """A cache hit marks its entry used (its modification time), so a cron job's
    `cache clear --unused-for N` keeps what runs still read, however long ago it was made."""
    import os
    import re
    import time

    from safetensors.torch import load_file

    cache = tmp_path / "cache"

    def stylize(content):
        result = runner.invoke(app, ["stylize", str(content), str(painting_path), "-o",
                                     str(tmp_path / "o.png"), "--size", "32", "--iterations",
                                     "1", "--targets", "torch", "--precision", "fp32",
                                     "--winograd", "off", "--cache-dir", str(cache)])
        assert result.exit_code == 0, result.output

    def targets():
        return {p: next(iter(load_file(p).values())).dim() == 3  # a content's: [C, h, w]
                for p in (cache / "targets").rglob("*.safetensors")}

    stylize(photo_path)
    weeks_ago = time.time() - 14 * 86400
    for entry in targets():
        os.utime(entry, (weeks_ago, weeks_ago))
    stylize(painting_path)  # the painting's style targets read again; its content's made
    photo = next(p for p, content in targets().items()
                 if content and p.stat().st_mtime == weeks_ago)

    def clear(*extra):
        return runner.invoke(app, ["cache", "clear", "--cache-dir", str(cache), *extra])

    cleared = clear("targets", "--unused-for", "7")
    assert cleared.exit_code == 0, cleared.output
    assert re.search(r"targets: 1 file\(s\) removed \([\d.]+ MB\), 2 used within 7 days kept",
                     cleared.output), cleared.output
    assert not photo.exists() and len(targets()) == 2  # the style's, used today, kept
    said = clear("--unused-for", "2").output  # every aged part
    assert said.count("0 file(s) removed") == 5, said
    assert len(targets()) == 2
    refused = clear("models", "--unused-for", "2")
    assert refused.exit_code == 2 and "models keep no time of use" in refused.output
    assert clear("--unused-for", "nan").exit_code == 2


def test_the_command_freezes_what_was_imported_before_it_runs(monkeypatch):
    """`pipeline` (main) moves every object made so far out of the collector's reach, so the
    collections at the interpreter's exit skip them."""
    import gc
    import importlib

    module = importlib.import_module("pipeline.cli.app")  # the module, not the Typer app

    seen = []
    monkeypatch.setattr(module, "app", lambda args, prog_name: seen.append(
        (gc.get_freeze_count(), args)))
    try:
        module.main(["--help"])
    finally:
        gc.unfreeze()
    assert seen and seen[0][0] > 1000 and seen[0][1] == ["--help"]


def test_a_wrong_path_fails_before_the_hardware_is_probed(painting_path, tmp_path, monkeypatch):
    """The runtime (and the probes a first run on a machine makes) starts only once the
    inputs are read: a mistyped path fails at once, whatever the cache holds."""
    from pipeline.accel.runtime import Runtime

    def refuse(*args, **kwargs):
        raise AssertionError("the runtime was started")

    monkeypatch.setattr(Runtime, "start", refuse)
    result = runner.invoke(app, ["stylize", str(tmp_path / "missing.png"), str(painting_path),
                                 "-o", str(tmp_path / "o.png"), "--size", "32"])
    assert result.exit_code == 2 and "missing.png: no such image file" in result.output


def test_out_of_memory_is_one_line_not_a_traceback(photo_path, painting_path, tmp_path,
                                                   monkeypatch):
    import torch

    import pipeline.api

    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(pipeline.api, "stylize_prepared", oom)
    result = runner.invoke(app, ["stylize", str(photo_path), str(painting_path), "-o",
                                 str(tmp_path / "o.png"), "--size", "64", "--precision", "fp32"])
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "out of memory" in lines[0] and "--size" in lines[0]


def test_every_stylize_option_runs_end_to_end(photo_path, painting_path, tmp_path,
                                              monkeypatch):
    """Two tiny runs that between them set every option of `stylize --help` away from its
    default: non-default layer sets (through the ONNX targets), per-layer weights, a blend,
    noise and image init, both optimizers, all three precisions' paths, a weights file."""
    import re

    from safetensors.torch import save_file

    from pipeline.gatys.weights import load_weights

    weights_file = tmp_path / "vgg19.safetensors"
    save_file(load_weights("caffe").state, weights_file, metadata={"normalization": "caffe"})
    second_style = tmp_path / "second.png"
    make_painting(seed=4).save(second_style)
    cache = tmp_path / "cache"
    masks = {name: tmp_path / f"{name}.png" for name in ("left", "right", "top", "seg", "sseg")}
    half = np.zeros((48, 64), np.uint8)
    half[:, :32] = 255
    Image.fromarray(half).save(masks["left"])
    Image.fromarray(255 - half).save(masks["right"])
    top = np.zeros((64, 64), np.uint8)
    top[:40] = 255
    Image.fromarray(top).save(masks["top"])
    Image.fromarray(np.stack([half] * 3, -1)).save(masks["seg"])
    Image.fromarray(np.stack([top] * 3, -1)).save(masks["sseg"])
    regions_adam = ["--masks", f"{masks['left']},{masks['right']}", "--style-masks",
                    f"{masks['top']},{masks['top']}", "--mask-mode", "simple", "--unmasked",
                    "styles"]
    # --storage-option only matters for URLs; it is kept in the environment, restored after
    monkeypatch.setenv("STYLE_PIPELINE_STORAGE_OPTIONS", "{}")
    regions_lbfgs = ["--storage-option", "anon=false",
                     "--segmentation", str(masks["seg"]), "--colors", "white",
                     "--style-segmentations", str(masks["sseg"]), "--mask-mode", "all"]
    adam = ["--size", "48", "--size-bucket", "8", "--iterations", "3", "--scales", "2",
            "--tol", "0.5", "--tol-window", "2", "--save-every", "1", "--trace",
            str(tmp_path / "trace.parquet"), "--trace-every", "2", "--jpeg-quality", "80",
            "--optimizer", "adam", "--lbfgs-clamp", "--lr", "5", "--content-weight", "2",
            "--style-weight", "50", "--tv-weight", "0.01", "--content-layers", "relu5_2",
            "--style-layers", "relu1_2,relu3_2", "--style-layer-weights", "1,2",
            "--style-blend", "3,1", "--style-scale", "1.5", "--init", "noise", "--seed", "3",
            "--preserve-colors", "--pooling", "avg", "--weights", "caffe", "--device", "cpu",
            "--precision", "bf16", "--channels-last", "on", "--winograd", "on",
            "--no-cudnn-benchmark",
            "--no-cuda-graphs", "--no-keep-cpu-memory", "--no-split-batches",
            "--targets", "onnx", "--providers", "cpu", "--no-trt-fp16", "--cache-dir",
            str(cache), "--no-cache-targets", "--quiet", *regions_adam]
    lbfgs = ["--size", "40", "--iterations", "2", "--optimizer", "lbfgs", "--lbfgs-history", "3",
             "--lbfgs-max-step", "8", "--lbfgs-precondition", "1", "--lbfgs-scaling",
             "standard", "--no-lbfgs-clamp", "--init", str(photo_path), "--no-preserve-colors",
             "--color", "match", "--color-match", "cholesky", "--bit-depth", "16",
             "--block-size", "16",
             "--weights", str(weights_file), "--precision", "fp64", "--channels-last", "off",
             "--cudnn-benchmark", "--cuda-graphs", "--keep-cpu-memory", "--split-batches",
             "--cache-targets", "--trt-fp16", "--targets", "torch", "--cache-dir", str(cache),
             *regions_lbfgs]
    help_text = runner.invoke(app, ["stylize", "--help"], terminal_width=300).output
    options = set(re.findall(r"--[a-z0-9-]+", help_text)) - {"--help", "--output"}
    assert options <= {a for a in adam + lbfgs if a.startswith("--")}, options - set(adam + lbfgs)
    for name, args, styles in (("adam.jpg", adam, [painting_path, second_style]),
                               ("lbfgs.png", lbfgs, [painting_path])):
        out = tmp_path / name
        result = runner.invoke(app, ["stylize", str(photo_path), *map(str, styles), "-o",
                                     str(out), *args], terminal_width=200)
        assert result.exit_code == 0, result.output
        meta = read_metadata(out)
        assert meta["params"]["size"] == int(args[1])
    adam_meta, lbfgs_meta = read_metadata(tmp_path / "adam.jpg"), read_metadata(tmp_path /
                                                                                "lbfgs.png")
    assert adam_meta["params"]["jpeg_quality"] == 80
    assert adam_meta["params"]["style_layers"] == ["relu1_2", "relu3_2"]
    assert adam_meta["params"]["content_layers"] == ["relu5_2"]
    assert adam_meta["precision"] == "bf16" and lbfgs_meta["precision"] == "fp64"
    assert adam_meta["params"]["color"] == "luminance" and lbfgs_meta["params"]["color"] == "match"
    assert adam_meta["params"]["mask_mode"] == "simple"
    assert adam_meta["params"]["lbfgs_clamp"] and not lbfgs_meta["params"]["lbfgs_clamp"]
    assert (tmp_path / "lbfgs.png").read_bytes()[24] == 16  # IHDR bit depth
    assert adam_meta["targets"]["backend"] == "onnx" and lbfgs_meta["targets"]["backend"] == "torch"
    assert list((cache / "models").glob("*-to-relu5_2-*.onnx"))  # the layer set's own model
    assert len(list((cache / "targets").rglob("*.safetensors"))) == 2  # lbfgs's only
