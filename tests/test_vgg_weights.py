import torch
from safetensors.torch import save_file

from pipeline.gatys import weights as W
from pipeline.gatys.layers import CONV_NAMES, LAYER_NAMES, min_input_side


def test_layer_names_follow_gatys():
    assert LAYER_NAMES[:5] == ("conv1_1", "relu1_1", "conv1_2", "relu1_2", "pool1")
    assert len(CONV_NAMES) == 16 and LAYER_NAMES[-1] == "pool5"
    assert "relu4_2" in LAYER_NAMES and "relu5_1" in LAYER_NAMES
    assert min_input_side(["relu1_1"]) == 1 and min_input_side(["relu5_1"]) == 16


def test_trunk_shapes_and_truncation():
    ws = W.load_weights("caffe")
    trunk = ws.trunk(last_layer="relu5_1")
    assert trunk.layer_names[-1] == "relu5_1"
    assert not any(p.requires_grad for p in trunk.parameters())
    feats = trunk(torch.rand(2, 3, 64, 48) * 255, ["relu1_1", "relu2_1", "relu3_1", "relu4_2",
                                                  "relu5_1"])
    assert feats["relu1_1"].shape == (2, 64, 64, 48)
    assert feats["relu2_1"].shape == (2, 128, 32, 24)
    assert feats["relu3_1"].shape == (2, 256, 16, 12)
    assert feats["relu4_2"].shape == (2, 512, 8, 6)
    assert feats["relu5_1"].shape == (2, 512, 4, 3)


def test_a_relu_only_a_max_pool_reads_runs_after_the_pool_with_the_same_numbers():
    """Max pooling commutes with ReLU, so the trunk pools first where no one reads the ReLU
    (vgg.py): its features and the gradient to the pixels are the layer-by-layer order's, bit
    for bit; average pooling does not commute and keeps the order."""
    ws = W.load_weights("caffe")
    trunk = ws.trunk(last_layer="relu5_1")
    assert trunk.pooled_first == {"relu1_2", "relu2_2", "relu3_4", "relu4_4"}
    assert not ws.trunk(pooling="avg").pooled_first
    wanted = ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu4_2", "relu5_1", "pool2"]

    def gradient(features: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return torch.autograd.grad([f.square().sum() for f in features.values()], x)[0]

    x = (torch.rand(2, 3, 48, 40, generator=torch.Generator().manual_seed(0)) * 255
         ).requires_grad_(True)
    seen = []
    trunk.layers["relu1_2"].register_forward_hook(lambda m, args, out: seen.append(out.shape))
    ours = trunk(x, wanted)
    assert seen == [(2, 64, 24, 20)]  # pool1's output: a quarter of conv1_2's pixels
    plain, y = {}, trunk.normalize(x)
    for name in trunk.layer_names:
        y = trunk.layers[name](y)
        if name in wanted:
            plain[name] = y
    assert all(torch.equal(ours[k], plain[k]) for k in wanted)
    assert torch.equal(gradient(ours, x), gradient(plain, x))
    # a pool's own ReLU asked for is returned as it is, before the pool
    asked = trunk(x, ["relu1_2", "conv1_2"])
    assert torch.equal(asked["relu1_2"], torch.relu(asked["conv1_2"]))
    assert seen[-1] == (2, 64, 48, 40)


def test_dequantized_weights_match_quantized_file():
    q = torch.load(W.caffe_quantized_path(), map_location="cpu", weights_only=True)
    state = W.load_weights("caffe").state
    for name in CONV_NAMES:
        b, i = name[4:].split("_")
        key = f"block{b}_conv{i}"
        expected = q[f"{key}_W_table"][q[f"{key}_W_q"].long()]
        torch.testing.assert_close(state[f"{name}.weight"], expected, rtol=0, atol=0)
        torch.testing.assert_close(state[f"{name}.bias"], q[f"{key}_b"], rtol=0, atol=0)
    assert state["conv1_1.weight"].shape == (64, 3, 3, 3)


def test_preprocessings_differ_as_expected(tmp_path):
    """The same conv weights behind the two normalizations: imagenet-normalized input equals the
    caffe trunk fed the imagenet-normalized tensor by hand, and the two feature sets differ."""
    caffe = W.load_weights("caffe")
    tv_sd = {f"features.{i}.{p}": caffe.state[f"{n}.{p}"]
             for n, i in zip(CONV_NAMES, W._TORCHVISION_CONV_INDEX, strict=True)
             for p in ("weight", "bias")}
    path = tmp_path / "vgg19-tv.pth"
    torch.save(tv_sd, path)
    tv = W.load_weights(str(path))
    assert tv.normalization == "imagenet" and caffe.normalization == "caffe"
    img = torch.rand(1, 3, 32, 32) * 255
    f_caffe = caffe.trunk(last_layer="relu2_1")(img, ["relu2_1"])["relu2_1"]
    f_tv = tv.trunk(last_layer="relu2_1")(img, ["relu2_1"])["relu2_1"]
    assert (f_caffe - f_tv).abs().max() > 1.0
    # Caffe: BGR, minus the mean pixel; imagenet: RGB/255, minus mean, over std.
    red = torch.zeros(1, 3, 1, 1)
    red[0, 0] = 255.0
    caffe_in = caffe.trunk(last_layer="relu1_1").normalize(red).flatten()
    torch.testing.assert_close(caffe_in, torch.tensor([-103.939, -116.779, 255 - 123.68]))
    tv_in = tv.trunk(last_layer="relu1_1").normalize(red).flatten()
    torch.testing.assert_close(tv_in, torch.tensor([(1 - .485) / .229, -.456 / .224, -.406 / .225]))
    # A safetensors user file with our layer names and declared normalization.
    st = tmp_path / "mine.safetensors"
    save_file(caffe.state, st, metadata={"normalization": "imagenet"})
    assert W.load_weights(str(st)).normalization == "imagenet"


def test_missing_sources_say_how_to_get_them(tmp_path, monkeypatch):
    import pytest

    from pipeline.errors import SourceMissingError

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(SourceMissingError, match="IMAGENET1K_V1"):
        W.load_weights("torchvision")
    with pytest.raises(SourceMissingError, match="not found"):
        W.load_weights(str(tmp_path / "nope.pth"))
    bad = tmp_path / "bad.pth"
    torch.save({"x": torch.zeros(1)}, bad)
    with pytest.raises(SourceMissingError, match="not a VGG19"):
        W.load_weights(str(bad))
