"""Colour control (Gatys et al. 2017) and output for print: 16-bit files, sRGB profiles."""

import io
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image, ImageCms

from pipeline import StyleJob, StyleParams, stylize_batch
from pipeline.api import job_key
from pipeline.errors import InputError
from pipeline.gatys.color import luminance, match_colors, match_luminance
from pipeline.io.images import SRGB_ICC, read_rgb
from pipeline.io.pixels import save_image, to_tensor
from tests.conftest import make_painting, make_photo


def _stats(x):
    pixels = x.double().reshape(3, -1)
    return pixels.mean(1), torch.cov(pixels, correction=0)


@pytest.mark.parametrize("method", ["pca", "cholesky", "symmetric"])
def test_match_gives_the_style_the_contents_colour_mean_and_covariance(method):
    style, content = to_tensor(make_painting()), to_tensor(make_photo())
    matched = match_colors(style, content, method)
    (mean, cov), (mean_c, cov_c) = _stats(matched), _stats(content)
    torch.testing.assert_close(mean, mean_c, rtol=0, atol=1e-3)
    torch.testing.assert_close(cov, cov_c, rtol=0, atol=1e-3 * cov_c.abs().max().item())
    assert not torch.allclose(matched, style, atol=5)


def test_the_three_matches_differ_but_agree_on_statistics():
    style, content = to_tensor(make_painting()), to_tensor(make_photo())
    pca, chol = (match_colors(style, content, m) for m in ("pca", "cholesky"))
    assert (pca - chol).abs().max() > 1  # another map, same moments


def test_luminance_matching_keeps_the_contents_mean_and_spread():
    style, content = to_tensor(make_painting()) * 0.3, to_tensor(make_photo())
    matched = match_luminance(style, content)
    y = luminance(content)
    assert torch.equal(matched[0], matched[1]) and torch.equal(matched[1], matched[2])
    assert matched.mean().item() == pytest.approx(y.mean().item(), abs=1e-3)
    assert matched.std().item() == pytest.approx(y.std().item(), rel=1e-4)


def _chroma(x):
    u = torch.tensor([-0.14713, -0.28886, 0.436]).view(3, 1, 1)
    v = torch.tensor([0.615, -0.51499, -0.10001]).view(3, 1, 1)
    return torch.stack([(x * u).sum(0), (x * v).sum(0)])


def test_each_colour_mode_end_to_end(cpu32):
    photo = make_photo()
    # a red style: its colours are far from the photo's
    painting = Image.fromarray((np.asarray(make_painting()) * [1, 0.35, 0.35]).astype(np.uint8))
    params = StyleParams(size=48, iterations=30)
    out = {color: to_tensor(stylize_batch([StyleJob(photo, [painting])],
                                          params.replace(color=color), cpu32)[0].image)
           for color in ("style", "luminance", "match")}
    content = to_tensor(photo.resize((48, 36), Image.Resampling.LANCZOS))
    # luminance keeps the content's chrominance (but where Y + chroma leaves 0-255 and is
    # clipped); the others do not
    assert (_chroma(out["luminance"]) - _chroma(content)).abs().median() < 0.5
    assert (_chroma(out["style"]) - _chroma(content)).abs().mean() > 4
    # the red style makes the output red; recoloured to the photo's colours first, it does not
    redness = {k: (x[0] - x[1]).mean().item() for k, x in out.items()}
    assert redness["style"] > 10 and redness["match"] < 0.5 * redness["style"]


def test_preserve_colors_is_luminance_and_keys_change_only_where_results_do():
    alias = StyleParams(preserve_colors=True)
    assert alias.color == "luminance" and alias == StyleParams(color="luminance")
    with pytest.raises(InputError, match="preserve_colors is color=luminance"):
        StyleParams(preserve_colors=True, color="match").validate()
    default = StyleParams().result_dict()  # the alias is never a key of its own
    assert "preserve_colors" not in default and "color_match" not in default
    keys = {job_key("c", ["s"], StyleParams(**kw)) for kw in (
        {}, {"color": "luminance"}, {"color": "match"},
        {"color": "match", "color_match": "cholesky"}, {"bit_depth": 16})}
    assert len(keys) == 5
    assert job_key("c", ["s"], StyleParams(color_match="cholesky")) == job_key("c", ["s"],
                                                                               StyleParams())


def _png16(path):
    data = path.read_bytes()
    width, height, depth, kind = struct.unpack(">IIBB", data[16:26])
    assert (depth, kind) == (16, 2)
    chunks, pos = {}, 8
    while pos < len(data):
        (length,), name = struct.unpack(">I", data[pos:pos + 4]), data[pos + 4:pos + 8]
        chunks[name] = chunks.get(name, b"") + data[pos + 8:pos + 8 + length]
        pos += 12 + length
    rows = np.frombuffer(zlib.decompress(chunks[b"IDAT"]), np.uint8).reshape(height, -1)
    assert (rows[:, 0] == 0).all()  # filter type 0
    return rows[:, 1:].copy().view(">u2").reshape(height, width, 3), chunks


def test_16_bit_png_and_tiff_keep_the_fp32_result_to_a_65535th(tmp_path):
    import tifffile

    x = torch.rand(3, 20, 30, generator=torch.Generator().manual_seed(0)) * 255
    expected = x.permute(1, 2, 0).double().numpy() * 257
    png = save_image(x, tmp_path / "out.png", {"job_key": "k"}, bit_depth=16)
    arr, chunks = _png16(png)
    assert np.abs(arr - expected).max() <= 0.5
    assert zlib.decompress(chunks[b"iCCP"].split(b"\0\0", 1)[1]) == SRGB_ICC
    tif = save_image(x, tmp_path / "out.tif", {"job_key": "k"})  # 16 by extension
    arr = tifffile.imread(tif)
    assert arr.dtype == np.uint16 and np.abs(arr - expected).max() <= 0.5
    for path in (png, tif):
        with Image.open(path) as img:  # readable elsewhere, tagged sRGB, metadata kept
            assert img.size == (30, 20) and img.info["icc_profile"] == SRGB_ICC
        assert read_rgb(path)[0].size == (30, 20)
    eight = save_image(x, tmp_path / "out8.tif", {}, bit_depth=8)
    assert tifffile.imread(eight).dtype == np.uint8
    with pytest.raises(InputError, match="JPEG holds 8 bits"):
        save_image(x, tmp_path / "out.jpg", {}, bit_depth=16)


def test_an_embedded_profile_is_converted_to_srgb(tmp_path):
    """The same pixel values untagged and tagged with a wider-gamut profile decode to
    different sRGB colours: the profile is honoured. CMYK with no profile still decodes."""
    rgb = np.full((8, 8, 3), (40, 180, 90), np.uint8)
    tagged, plain = tmp_path / "tagged.png", tmp_path / "plain.png"
    Image.fromarray(rgb).save(tagged, icc_profile=_display_p3_like())
    Image.fromarray(rgb).save(plain)
    assert np.asarray(read_rgb(plain)[0]).tolist() == rgb.tolist()
    assert np.abs(np.asarray(read_rgb(tagged)[0]).astype(int) - rgb).max() >= 5
    cmyk = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(cmyk)
    assert read_rgb(cmyk)[0].mode == "RGB"


def _display_p3_like() -> bytes:
    """An RGB ICC profile with wider primaries than sRGB's: Pillow's sRGB profile with its
    red colorant moved (a synthetic stand-in for Display P3, enough to see a conversion)."""
    data = bytearray(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())
    count = struct.unpack(">I", data[128:132])[0]
    for i in range(count):
        sig, offset, _ = struct.unpack(">4sII", data[132 + 12 * i:144 + 12 * i])
        if sig == b"rXYZ":  # XYZType: 8 bytes header, then s15Fixed16 X, Y, Z
            data[offset + 8:offset + 20] = struct.pack(">iii", int(0.52 * 65536),
                                                       int(0.24 * 65536), int(0.0 * 65536))
        if sig == b"desc" and data[offset:offset + 4] == b"mluc":  # its text is UTF-16 at +28
            data[offset + 28:offset + 36] = "Wide".encode("utf-16-be")
    profile = ImageCms.ImageCmsProfile(io.BytesIO(bytes(data)))
    assert ImageCms.getProfileDescription(profile).startswith("Wide")
    return bytes(data)


def test_a_manifest_sets_colour_and_16_bit_tiff_per_row(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    import tifffile

    from pipeline.io.images import read_metadata
    from tests.run_helpers import run_cli

    make_photo().save(tmp_path / "c.png")
    make_painting().save(tmp_path / "s.png")
    rows = [{"content": "c.png", "style": "s.png", "output": "a.tif", "color": "match",
             "color_match": "symmetric", "bit_depth": None},
            {"content": "c.png", "style": "s.png", "output": "b.png", "color": "luminance",
             "color_match": None, "bit_depth": 16},
            {"content": "c.png", "style": "s.png", "output": "c.jpg", "color": None,
             "color_match": None, "bit_depth": 16}]
    manifest = tmp_path / "m.parquet"
    pq.write_table(pa.Table.from_pylist(rows), manifest)
    result = run_cli(manifest, tmp_path / "out")
    assert result.exit_code == 2 and "row 2" in result.output and "JPEG holds 8 bits" in (
        result.output)
    pq.write_table(pa.Table.from_pylist(rows[:2]), manifest)
    result = run_cli(manifest, tmp_path / "out")
    assert result.exit_code == 0, result.output
    out = tmp_path / "out"
    assert tifffile.imread(out / "a.tif").dtype == np.uint16
    assert (out / "b.png").read_bytes()[24] == 16
    assert read_metadata(out / "a.tif")["params"]["color_match"] == "symmetric"
    assert read_metadata(out / "b.png")["params"]["color"] == "luminance"


def test_a_broken_profile_is_said_and_ignored(tmp_path, caplog):
    import logging

    path = tmp_path / "broken.png"
    rgb = np.full((4, 4, 3), 100, np.uint8)
    Image.fromarray(rgb).save(path, icc_profile=b"not a profile")
    with caplog.at_level(logging.WARNING, logger="pipeline.images"):
        img, _ = read_rgb(path)
    assert np.asarray(img).tolist() == rgb.tolist()
    assert "broken.png: its ICC profile was ignored" in caplog.text
