import pytest
import torch

from pipeline.gatys.color import with_chroma
from pipeline.gatys.losses import (
    LossWeights,
    SplitTarget,
    Targets,
    gram,
    gram_mse,
    loss_terms,
    mse_per_sample,
    tv_per_sample,
)


def test_gram_matches_definition_and_is_per_sample():
    f = torch.randn(2, 3, 4, 5)
    g = gram(f)
    assert g.shape == (2, 3, 3)
    for i in range(2):
        m = f[i].reshape(3, 20)
        torch.testing.assert_close(g[i], m @ m.T / (3 * 4 * 5))
    torch.testing.assert_close(gram(f[1:]), g[1:])  # no coupling between samples


def test_gram_is_fp32_for_bf16_features():
    f = torch.randn(1, 8, 4, 4).bfloat16()
    assert gram(f).dtype == torch.float32


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-6), (torch.bfloat16, 1e-2)])
def test_gram_mse_gradient_matches_autograd_of_the_definition(channels_last, dtype, tol):
    torch.manual_seed(0)
    f = torch.randn(2, 8, 5, 6).to(dtype)
    if channels_last:
        f = f.contiguous(memory_format=torch.channels_last)
    f.requires_grad_(True)
    target, w = gram(torch.randn(2, 8, 5, 6)), torch.tensor([0.3, 2.0])
    (gram_mse(f, target) * w).sum().backward()
    ours, f.grad = f.grad, None
    ref = f.double().reshape(2, 8, 30)
    g = ref @ ref.transpose(1, 2) / (8 * 30)
    loss = (g - target).square().mean((1, 2))
    torch.testing.assert_close(loss.float(), gram_mse(f, target).detach())
    (loss * w).sum().backward()
    assert ours.dtype == dtype  # the trunk's gradient stays in the trunk's dtype
    assert ours.is_contiguous(memory_format=torch.channels_last) == channels_last
    err = (ours.double() - f.grad.double()).abs().max() / f.grad.abs().max()
    assert err < tol


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-6), (torch.bfloat16, 1e-2)])
def test_guided_gram_mse_matches_autograd_of_the_definition(channels_last, dtype, tol):
    """Three regions in one GEMM each way: each region's F diag(v/a) F^T against its own
    target, weighted by its area a, and the gradient back to F in the features' layout."""
    torch.manual_seed(0)
    f = torch.randn(2, 8, 5, 6).relu().to(dtype)
    if channels_last:
        f = f.contiguous(memory_format=torch.channels_last)
    f.requires_grad_(True)
    guides = torch.rand(2, 3, 5, 6)
    guides[1, 2] = 0  # an empty region adds nothing
    target, w = torch.randn(2, 3, 8, 8), torch.tensor([0.3, 2.0])
    target = target + target.transpose(2, 3)  # a Gram is symmetric
    (gram_mse(f, target, guides) * w).sum().backward()
    ours, f.grad = f.grad, None
    ref = f.double().reshape(2, 1, 8, 30)
    area = guides.double().mean((2, 3))
    v = torch.where(area[..., None] > 0, guides.double().reshape(2, 3, 30)
                    / area[..., None].clamp_min(1e-300), 0.0)
    g = (ref * v[:, :, None]) @ ref.transpose(2, 3) / (8 * 30)
    loss = ((g - target.double()).square().mean((2, 3)) * area).sum(1)
    torch.testing.assert_close(loss.float(), gram_mse(f, target, guides).detach(),
                               rtol=tol, atol=0)
    (loss * w).sum().backward()
    assert ours.dtype == dtype
    assert ours.is_contiguous(memory_format=torch.channels_last) == channels_last
    err = (ours.double() - f.grad.double()).abs().max() / f.grad.abs().max()
    assert err < tol


@pytest.mark.parametrize("split_for", [torch.bfloat16, torch.float32])
def test_a_target_split_once_gives_the_loss_of_one_split_per_call(split_for):
    """engine.objective splits each style target once; features of another dtype than the
    split's get it split again, so the loss never depends on which path ran."""
    torch.manual_seed(0)
    f = torch.randn(2, 8, 5, 6).relu().bfloat16()
    target = gram(torch.randn(2, 8, 5, 6).relu())
    split = SplitTarget.of(target, split_for)
    assert (split.lo is None) == (split_for == torch.float32)
    torch.testing.assert_close(gram_mse(f, split), gram_mse(f, target), rtol=0, atol=0)
    torch.testing.assert_close(gram_mse(f.float(), split), gram_mse(f.float(), target),
                               rtol=0, atol=0)


@pytest.mark.parametrize("channels_last", [False, True])
def test_bf16_gram_mse_is_exact_to_the_residual_not_to_the_gram(channels_last):
    """Near convergence G - T is much smaller than G: a bf16 Gram (2^-9 of G) would swamp it.
    With the target 0.1% away, the loss must still match fp64 of the same bf16 features."""
    torch.manual_seed(0)
    f = torch.randn(2, 16, 24, 32).relu().bfloat16()
    if channels_last:
        f = f.contiguous(memory_format=torch.channels_last)
    m = f.double().reshape(2, 16, -1)
    g = m @ m.transpose(1, 2) / m[0].numel()
    noise = torch.randn(2, 16, 16, dtype=torch.float64)
    target = g * (1 + 1e-3 * (noise + noise.transpose(1, 2)))
    exact = (g - target).square().mean((1, 2))
    torch.testing.assert_close(gram_mse(f, target.float()).double(), exact, rtol=1e-2, atol=0)
    rounded = (g.bfloat16().double() - target).square().mean((1, 2))
    assert ((rounded - exact).abs() / exact).min() > 0.1  # what the split avoids


def test_content_gradient_keeps_the_features_layout():
    """mse_per_sample on channels_last features gives a channels_last gradient (flatten or
    mean would write it NCHW, and autograd then adds it to the trunk's on a slow path)."""
    feats = torch.randn(2, 8, 6, 5).to(memory_format=torch.channels_last)
    feats = feats.to(torch.bfloat16).requires_grad_(True)
    target = torch.randn(2, 8, 6, 5).to(memory_format=torch.channels_last)
    loss = mse_per_sample(feats, target)
    want = ((feats.detach().float() - target) ** 2).reshape(2, -1).mean(1)
    torch.testing.assert_close(loss, want)
    (grad,) = torch.autograd.grad(loss.sum(), feats)  # as it flows, before any leaf's layout
    assert grad.is_contiguous(memory_format=torch.channels_last)


def test_tv_of_constant_is_zero_and_of_step_is_known():
    assert tv_per_sample(torch.full((1, 3, 5, 5), 7.0)).item() == 0
    x = torch.zeros(1, 1, 3, 3)
    x[..., 2] = 2.0  # a vertical edge: dx = 2 on 2 rows of the [H-1, W-1] region, dy = 0
    assert tv_per_sample(x).item() == 0.5 * 2 * 2.0**2


def test_loss_terms_zero_at_targets_and_weighted():
    feats = {"a": torch.randn(2, 4, 3, 3), "b": torch.randn(2, 5, 2, 2)}
    image = torch.full((2, 3, 8, 8), 100.0)
    targets = Targets({"a": feats["a"].clone()}, {"b": gram(feats["b"])})
    w = LossWeights(content=5, style=100, tv=1e-3, style_layers={"b": 1.0})
    terms = loss_terms(feats, image, targets, w)
    for k in ("content", "style", "tv", "total"):  # zero up to fp32 rounding of the GEMM
        torch.testing.assert_close(terms[k], torch.zeros(2), rtol=0, atol=1e-12, msg=k)
    shifted = {"a": feats["a"] + 1.0, "b": feats["b"]}
    terms = loss_terms(shifted, image, targets, w)
    torch.testing.assert_close(terms["content"], torch.full((2,), 5.0))
    torch.testing.assert_close(mse_per_sample(feats["a"] + 2, feats["a"]), torch.full((2,), 4.0))


def test_with_chroma_keeps_output_luminance_and_content_chroma():
    out, content = torch.rand(2, 3, 6, 6) * 255, torch.rand(2, 3, 6, 6) * 255
    merged = with_chroma(out, content)
    luma = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    torch.testing.assert_close((merged * luma).sum(1), (out * luma).sum(1), rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(with_chroma(content, content), content, rtol=1e-4, atol=1e-3)
