import io
import os

import numpy as np
import pytest
from PIL import Image

from pipeline import StyleJob, StyleParams, stylize_batch
from pipeline.errors import InputError
from pipeline.io.images import (
    fit_longest_side,
    intermediates_beside,
    open_rgb,
    read_metadata,
    read_rgb,
    read_rgb_for,
    resize,
    to_rgb,
)
from pipeline.io.pixels import save_image
from tests.conftest import make_photo


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "CMYK", "I;16", "I", "F", "1"])
def test_every_mode_becomes_rgb(mode, tmp_path):
    base = Image.fromarray(np.full((20, 30, 3), (200, 100, 50), np.uint8))
    if mode == "I;16":
        img = Image.fromarray(np.full((20, 30), 40000, np.uint16))
        assert img.mode == "I;16"
    elif mode == "I":
        img = Image.fromarray(np.full((20, 30), 65535, np.int32), mode="I")
    elif mode == "F":
        img = Image.fromarray(np.full((20, 30), 0.5, np.float32), mode="F")
    else:
        img = base.convert(mode)
    path = tmp_path / ("x.tiff" if mode in ("I;16", "I", "F", "CMYK") else "x.png")
    img.save(path)
    out = open_rgb(path)
    assert out.mode == "RGB" and out.size == (30, 20)
    px = np.asarray(out)[0, 0]
    if mode == "I;16":  # 16-bit scaled, not clipped to white
        assert abs(int(px[0]) - round(40000 / 257)) <= 1
    elif mode == "I":
        assert tuple(px) == (255, 255, 255)
    elif mode == "F":
        assert abs(int(px[0]) - 128) <= 1


def test_transparency_is_composited_over_white():
    rgba = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    assert np.asarray(to_rgb(rgba))[0, 0].tolist() == [255, 255, 255]
    half = Image.new("RGBA", (4, 4), (0, 0, 0, 128))
    assert 120 <= np.asarray(to_rgb(half))[0, 0, 0] <= 135


def test_exif_orientation_is_honoured(tmp_path):
    img = Image.new("RGB", (40, 20), (10, 20, 30))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 on display
    path = tmp_path / "rot.jpg"
    img.save(path, exif=exif)
    assert open_rgb(path).size == (20, 40)


@pytest.mark.parametrize("orientation", [1, 6])
def test_a_large_jpeg_is_decoded_at_a_reduced_scale_near_its_full_decode(tmp_path, orientation):
    """A JPEG over four times the size it is resized to comes at a DCT scale of at least four
    times that size; the resized result is within a few levels of the full decode's, and its size as
    given (EXIF orientation applied) is the file's."""
    photo = make_photo((800, 600), seed=2)
    exif = photo.getexif()
    exif[0x0112] = orientation
    path = tmp_path / "big.jpg"
    photo.save(path, quality=95, exif=exif)
    full, digest = read_rgb(path)
    drafted, same, given = read_rgb_for(path, 100)
    assert same == digest and given == full.size == ((800, 600) if orientation == 1 else (600, 800))
    assert drafted.size == ((400, 300) if orientation == 1 else (300, 400))  # 1/2 scale
    assert read_rgb_for(path, 200)[0].size == full.size  # not over four times: whole
    size = fit_longest_side(given, 100)
    diff = np.abs(np.asarray(resize(drafted, size), np.int16) - np.asarray(resize(full, size)))
    assert diff.mean() < 1 and diff.max() <= 12
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(path.read_bytes()[:4000])
    with pytest.raises(InputError, match=r"cut\.jpg: cannot decode"):
        read_rgb_for(cut, 100)


def test_missing_corrupt_and_truncated_files_name_the_file(tmp_path):
    with pytest.raises(InputError, match=r"nope\.png: no such image file"):
        open_rgb(tmp_path / "nope.png")
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"this is not an image")
    with pytest.raises(InputError, match=r"bad\.jpg: cannot decode"):
        open_rgb(bad)
    good = tmp_path / "good.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(good)
    cut = tmp_path / "cut.png"
    cut.write_bytes(good.read_bytes()[:2000])
    with pytest.raises(InputError, match=r"cut\.png: cannot decode"):
        open_rgb(cut)


def test_tiny_or_elongated_images_are_rejected(tmp_path, cpu32):
    tiny = tmp_path / "tiny.png"
    Image.new("RGB", (400, 8)).save(tiny)
    style = tmp_path / "s.png"
    Image.new("RGB", (64, 64), (9, 9, 9)).save(style)
    with pytest.raises(InputError, match=r"tiny\.png: content image 400x8 would be 64x1"):
        stylize_batch([StyleJob(tiny, [style])], StyleParams(size=64, iterations=1), cpu32)
    with pytest.raises(InputError, match=r"tiny\.png: style image"):
        stylize_batch([StyleJob(style, [tiny])], StyleParams(size=64, iterations=1), cpu32)


def test_size_bucket_rounds_the_shorter_side_by_at_most_half_a_bucket():
    rng = np.random.default_rng(0)
    for w, h in rng.integers(40, 5000, size=(300, 2)):
        for longest, bucket in ((512, 8), (512, 64), (300, 7)):
            exact = fit_longest_side((w, h), longest)
            snapped = fit_longest_side((w, h), longest, bucket)
            short = int(np.argmin(exact)) if w != h else 1
            assert snapped[1 - short] == exact[1 - short] == longest
            assert abs(snapped[short] - exact[short]) <= bucket / 2
            assert snapped[short] % bucket == 0 or snapped[short] in (longest, exact[short])
    assert fit_longest_side((3000, 2000), 512) != fit_longest_side((1024, 683), 512)
    assert fit_longest_side((3000, 2000), 512, 8) == fit_longest_side((1024, 683), 512, 8) \
        == (512, 344)
    assert fit_longest_side((683, 1024), 512, 8) == (344, 512)  # portrait: the width snaps
    assert fit_longest_side((5000, 100), 512, 16) == (512, 16)
    assert fit_longest_side((5000, 50), 512, 16) == (512, 5)  # under half a bucket: kept


@pytest.mark.parametrize(("change", "message"), [
    ({"size": 8}, "size must be between"), ({"size": 10**6}, "size must be between"),
    ({"tv_weight": float("nan")}, "tv_weight must be a finite"),
    ({"style_weight": float("inf")}, "style_weight must be a finite"),
    ({"optimizer": "sgd"}, "optimizer must be one of"), ({"pooling": "min"}, "pooling"),
    ({"content_layers": ("relu9_9",)}, "unknown VGG19 layer"),
    ({"style_blend": (1.0, 2.0)}, "style_blend has 2 values but needs 1"),
    ({"style_layer_weights": (1.0,)}, "style_layer_weights has 1 values"),
    ({"iterations": -1}, "iterations must be"), ({"style_scale": 0.0}, "style_scale"),
    ({"size_bucket": -8}, "size_bucket must be between 0 and size"),
    ({"size": 64, "size_bucket": 65}, "size_bucket must be between 0 and size"),
])
def test_bad_parameters_are_named(change, message):
    with pytest.raises(InputError, match=message):
        StyleParams(**change).validate()


def test_save_is_atomic_with_metadata(tmp_path):
    img = Image.new("RGB", (8, 8), (1, 2, 3))
    for name in ("a.png", "b.jpg"):
        path = save_image(img, tmp_path / name, {"params": {"size": 8}})
        assert read_metadata(path) == {"params": {"size": 8}}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "b.jpg"]  # no temp files
    with pytest.raises(InputError, match=r"must end in \.png"):
        save_image(img, tmp_path / "c.gif")
    with pytest.raises(InputError, match=r"\.png: output has no name before its extension"):
        save_image(img, tmp_path / ".png")


def _jpeg_quality(path) -> int:
    """The quality a JPEG was written at: the one whose quantization tables Pillow makes."""
    tables = Image.open(path).quantization
    probe = Image.new("RGB", (8, 8))
    for quality in range(1, 101):
        probe.save(buffer := io.BytesIO(), format="JPEG", quality=quality)
        if Image.open(buffer).quantization == tables:
            return quality
    raise AssertionError(f"{path}: no quality of Pillow's")


def test_jpeg_quality_reaches_every_jpeg_written_and_leaves_the_key(tmp_path, photo_path,
                                                                     painting_path):
    """From `stylize` (its output and intermediates) and from a manifest's column in a run
    (where a row without it gets the default); the job's key is the same at any quality."""
    from pipeline.bulk.manifest import write_manifest
    from pipeline.cli import app
    from tests.run_helpers import run_cli, runner

    made = {}
    for quality in ("40", "95"):
        made[quality] = tmp_path / f"q{quality}.jpg"
        result = runner.invoke(app, ["stylize", str(photo_path), str(painting_path), "-o",
                                     str(made[quality]), "--size", "32", "--iterations", "4",
                                     "--save-every", "2", "--jpeg-quality", quality, "-q"])
        assert result.exit_code == 0, result.output
        assert _jpeg_quality(made[quality]) == int(quality)
        assert _jpeg_quality(tmp_path / f"q{quality}.iter0002.jpg") == int(quality)
    assert made["40"].stat().st_size < made["95"].stat().st_size
    assert len({read_metadata(made[q])["job_key"] for q in made}) == 1

    manifest = write_manifest([{"content": str(photo_path), "style": str(painting_path),
                                "output": "low.jpg", "jpeg_quality": 30},
                               {"content": str(photo_path), "style": str(painting_path),
                                "output": "default.jpg"}],
                              tmp_path / "m.parquet")
    result = run_cli(manifest, tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert _jpeg_quality(tmp_path / "out" / "low.jpg") == 30
    assert _jpeg_quality(tmp_path / "out" / "default.jpg") == 95


def test_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "out.png"
    save_image(Image.new("RGB", (8, 8)), path, {"v": 1})

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", boom)
    with pytest.raises(OSError):
        save_image(Image.new("RGB", (8, 8)), path, {"v": 2})
    assert read_metadata(path) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]


def test_intermediates_of_many_outputs_list_each_folder_once(tmp_path, monkeypatch):
    """A report of N jobs in one folder once listed it per job (N^2); the names it picks
    are those a glob per output picked."""
    sub = tmp_path / "sub"
    sub.mkdir()
    names = ["a.iter0003.png", "a.iter0010.png", "a.iter0003.jpg", "a.iterx.png",
             "a.iter0003.iter0005.png", "ab.iter0002.png",
             ".a.iter0004.png.x1.style-pipeline-tmp.png"]
    for folder in (tmp_path, sub):
        for n in names:
            (folder / n).write_bytes(b"")
    (tmp_path / "b.iter0007.png").write_bytes(b"")
    listed = []
    real_listdir = os.listdir
    monkeypatch.setattr(os, "listdir", lambda p: listed.append(p) or real_listdir(p))
    outputs = [tmp_path / "a.png", tmp_path / "a.jpg", tmp_path / "a.iter0003.png",
               tmp_path / "b.png", sub / "a.png", tmp_path / "missing" / "a.png"]
    found = intermediates_beside((o, None) for o in outputs)
    assert sorted(listed) == sorted([tmp_path, sub, tmp_path / "missing"])
    assert {o.relative_to(tmp_path).as_posix(): [(i, p.name) for i, p in f]
            for o, f in found.items()} == {
        "a.png": [(3, "a.iter0003.png"), (10, "a.iter0010.png")],
        "a.jpg": [(3, "a.iter0003.jpg")],
        "a.iter0003.png": [(5, "a.iter0003.iter0005.png")],
        "b.png": [(7, "b.iter0007.png")],
        "sub/a.png": [(3, "a.iter0003.png"), (10, "a.iter0010.png")],
        "missing/a.png": []}
