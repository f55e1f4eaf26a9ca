"""The objective by blocks is the whole-image objective: same loss terms, same gradient, up to
float reassociation; and the memory pre-flight picks it by itself when an image does not fit."""

import logging

import pytest
import torch

from pipeline import Runtime, StyleJob, StyleParams, stylize_batch
from pipeline.accel import memory
from pipeline.api import prepare, setup_batch
from pipeline.errors import InputError
from pipeline.gatys import blockwise
from pipeline.gatys.blockwise import BlockObjective, Grid, blocks
from pipeline.gatys.engine import Objective, evaluate_and_backward, loss_weights, trunk_for
from pipeline.io.pixels import to_tensor
from pipeline.targets.builder import torch_features
from tests.conftest import make_painting, make_photo, snapshots

# Layers through relu3_1 keep the margin at 12 px, so small images split into many real
# blocks (through relu5_1 the margin is 80 px).
SHALLOW = dict(content_layers=("relu3_1",), style_layers=("relu1_1", "relu2_1", "relu3_1"))
# (loss rtol, gradient relative error): fp64 and fp32 differ from the whole image only by
# reassociation (conv algorithms per crop shape, Gram sums per block); bf16 also by the whole
# image's bf16 rounding of G - T, which the blocks' fp32 Gram sums do not have
# (blockwise.py), 2^-9 of the residual.
TOLERANCE = {"fp64": (1e-12, 1e-12), "fp32": (1e-5, 1e-4), "bf16": (2e-3, 2e-2)}


def _problem(params, runtime, size=(96, 72)):
    jobs = [StyleJob(make_photo(size, seed=s), [make_painting(seed=s + 1)]) for s in (0, 3)]
    problem = setup_batch([prepare(j, params) for j in jobs], params, runtime)
    stage = problem.stages[-1]
    gen = torch.Generator().manual_seed(0)
    x = problem.x0 + 20 * torch.randn(problem.x0.shape, generator=gen)
    return problem.trunk, stage, x.to(runtime.pixel_dtype)


def _both(params, runtime, side, size=(96, 72)):
    trunk, stage, x = _problem(params, runtime, size)
    whole_x = x.clone().requires_grad_(True)
    whole = evaluate_and_backward(Objective(trunk, stage.targets, params, runtime), whole_x)
    net = runtime.compute_trunk(trunk)
    by_blocks = BlockObjective(net, stage.targets, loss_weights(params), runtime.layout, side)
    block_x = x.clone().requires_grad_(True)
    parts = by_blocks.gradient(block_x)
    return whole, whole_x.grad, parts, block_x.grad


# bf16 departs from fp32 by its rounding, not by the number of blocks: one block size for it
# (where the CPU has no bf16 kernels, torch's generic bf16 convolution costs 30x fp32's).
CASES = [(p, side) for p in ("fp64", "fp32", "bf16") for side in (16, 40)
         if (p, side) != ("bf16", 16)]


@pytest.mark.parametrize(("precision", "side"), CASES)
@pytest.mark.parametrize("pooling", ["max", "avg"])
def test_block_loss_and_gradient_equal_the_whole_image(precision, pooling, side):
    # Direct convolutions: Winograd's tiles fall differently in a block's crop than in the
    # whole image, which rounds differently in fp32 (accel/winograd.py), not the blocks' math.
    runtime = Runtime.create("cpu", precision, channels_last=precision == "bf16",
                             targets="torch", winograd=False)
    params = StyleParams(size=96, pooling=pooling, **SHALLOW)
    whole, whole_grad, parts, grad = _both(params, runtime, side)
    assert len(blocks((96, 72), side, Grid.of(params.layers))) >= 6
    loss_tol, grad_tol = TOLERANCE[precision]
    for k in ("content", "style", "tv", "total"):
        torch.testing.assert_close(parts[k], whole[k], rtol=loss_tol, atol=0)
    assert ((grad - whole_grad).norm() / whole_grad.norm()).item() < grad_tol


def test_default_layers_by_blocks_in_fp32(cpu32):
    """Through relu5_1 (margin 80 px): a 256 px image in 96 px blocks."""
    params = StyleParams(size=256)
    whole, whole_grad, parts, grad = _both(params, cpu32.widened(), 96, (256, 192))
    torch.testing.assert_close(parts["total"], whole["total"], rtol=1e-5, atol=0)
    assert ((grad - whole_grad).norm() / whole_grad.norm()).item() < 1e-4


def test_a_margin_short_of_the_receptive_field_is_not_exact(cpu64, monkeypatch):
    """The check above can fail: one grid step less margin than the receptive field needs
    changes the gradient far beyond reassociation."""
    params = StyleParams(size=96, **SHALLOW)
    grid = Grid.of(params.layers)
    assert grid == Grid(align=4, margin=12)
    monkeypatch.setattr(Grid, "of", classmethod(lambda cls, layers: Grid(4, 8)))
    _, whole_grad, _, grad = _both(params, cpu64, 16)
    assert ((grad - whole_grad).norm() / whole_grad.norm()).item() > 1e-6


def test_grid_covers_the_receptive_field_and_blocks_partition_the_image():
    assert Grid.of(("relu4_2", "relu5_1")) == Grid(align=16, margin=80)
    assert Grid.of(("relu1_1",)) == Grid(align=1, margin=1)
    grid = Grid.of(("relu5_1",))
    tiles = blocks((1000, 700), 256, grid)
    covered = torch.zeros(700, 1000, dtype=torch.int32)
    for b in tiles:
        y0, y1, x0, x1 = b.inner
        covered[y0:y1, x0:x1] += 1
        assert y1 - y0 <= 256 and x1 - x0 <= 256
        assert all(v % 16 == 0 for v in (y0, x0, b.crop[0], b.crop[2]))
        assert b.crop[0] == max(0, y0 - 80) and b.crop[1] == min(700, y1 + 80)
    assert bool((covered == 1).all())


def test_targets_by_blocks_equal_the_whole_image(cpu32):
    params = StyleParams(size=256)
    trunk, _ = trunk_for(params, cpu32)
    features = torch_features(trunk)
    image = torch.rand(1, 3, 200, 264) * 255
    whole = features(image, ("relu4_2",))["relu4_2"]
    parts = blockwise.features_by_blocks(features, image, ("relu4_2",), 64)["relu4_2"]
    torch.testing.assert_close(parts, whole, rtol=1e-4, atol=1e-3)
    layers = ("relu1_1", "relu3_1", "relu5_1")
    from pipeline.gatys.losses import gram

    whole_grams = {k: gram(v) for k, v in features(image, layers).items()}
    for k, g in blockwise.grams_by_blocks(features, image, layers, 64).items():
        torch.testing.assert_close(g, whole_grams[k], rtol=1e-4, atol=1e-4)


def _cost(runtime, params):
    trunk, _ = trunk_for(params, runtime)
    net = runtime.compute_trunk(trunk)
    return memory.pixel_cost(net, params.layers, params.content_layers, runtime.channels_last)


def test_preflight_picks_blocks_and_the_result_is_the_whole_images(cpu64, monkeypatch):
    """In fp64, where L-BFGS's amplification of reassociation stays far below a level."""
    params = StyleParams(size=96, iterations=6, tol=0, **SHALLOW)
    jobs = [StyleJob(make_photo((96, 72)), [make_painting()])]
    whole = stylize_batch(jobs, params, cpu64)[0]
    cost, grid = _cost(cpu64, params), Grid.of(params.layers)
    need = memory.block_bytes(cost, params, (96, 72), 32, grid.margin, 6)
    assert need < memory.bytes_per_image(cost, params, (96, 72), 6)
    monkeypatch.setattr(memory, "RESERVE", 0)
    free = int(need / memory.BLOCK_SAFETY) + 64
    monkeypatch.setattr(memory, "available_bytes", lambda device: free)
    problem = setup_batch([prepare(jobs[0], params)], params, cpu64)
    assert 0 < problem.stages[-1].block < 96 and problem.stages[-1].history is None
    calls = []
    original = BlockObjective.gradient
    monkeypatch.setattr(BlockObjective, "gradient",
                        lambda self, x: calls.append(1) or original(self, x))
    by_blocks = stylize_batch(jobs, params, cpu64)[0]
    assert len(calls) == 6
    assert by_blocks.losses["total"] == pytest.approx(whole.losses["total"], rel=1e-9)
    assert (to_tensor(whole.image) - to_tensor(by_blocks.image)).abs().max() <= 1


def test_preflight_shrinks_the_history_then_refuses(cpu32, monkeypatch, caplog):
    params = StyleParams(size=96, iterations=50, **SHALLOW)
    job = StyleJob(make_photo((96, 72)), [make_painting()])
    cost, grid = _cost(cpu32, params), Grid.of(params.layers)
    monkeypatch.setattr(memory, "MIN_BLOCK", 32)  # 512 px at this scale
    # Room for a 32 px block beside 20 pairs, not beside 50.
    room = memory.block_bytes(cost, params, (96, 72), 32, grid.margin, 20)
    monkeypatch.setattr(memory, "RESERVE", 0)
    free = int(room / memory.BLOCK_SAFETY) + 64
    monkeypatch.setattr(memory, "available_bytes", lambda device: free)
    with caplog.at_level(logging.WARNING, logger="pipeline.memory"):
        problem = setup_batch([prepare(job, params)], params, cpu32)
    assert problem.stages[-1].history == 20
    assert "L-BFGS keeps 20 pairs instead of 50" in caplog.text
    result = stylize_batch([job], params.replace(iterations=3), cpu32)[0]
    assert result.image.size == (96, 72)
    tiny = memory.block_bytes(cost, params, (96, 72), 4, grid.margin, 2)
    monkeypatch.setattr(memory, "available_bytes", lambda device: tiny)
    with pytest.raises(InputError, match=r"96x72 px on cpu needs about .* even by blocks"):
        setup_batch([prepare(job, params)], params, cpu32)


def test_block_size_option_forces_blocks(cpu32):
    params = StyleParams(size=96, iterations=2, **SHALLOW)
    runtime = Runtime.create("cpu", "fp32", channels_last=False, block_size=40)
    job = StyleJob(make_photo((96, 72)), [make_painting()])
    assert setup_batch([prepare(job, params)], params, runtime).stages[-1].block == 40
    for bad in (-1, 1, 15):  # 1..15 were rounded up to 16 px blocks, 150x slower, silently
        with pytest.raises(InputError, match=r"block size must be 0 \(auto\) or at least 16"):
            Runtime.create("cpu", block_size=bad)


def test_by_blocks_coarse_to_fine_resumes_and_batches_as_whole(cpu64, small_scales):
    """Blocks in both stages (--block-size applies to every stage), a batch of two, resumed
    from a checkpoint inside the fine stage: the image of the uninterrupted run, and each job
    as it would be alone and as it would be whole."""

    from pipeline.gatys.engine import Checkpointing

    runtime = Runtime.create("cpu", "fp64", channels_last=False, block_size=16)
    params = StyleParams(size=64, iterations=3, scales=2, tol=0, **SHALLOW)
    jobs = [StyleJob(make_photo((64, 48), seed=s), [make_painting(seed=s + 1)]) for s in (0, 2)]
    problem = setup_batch([prepare(j, params) for j in jobs], params, runtime)
    assert [s.block for s in problem.stages] == [16, 16]
    saved, save = snapshots()
    full = stylize_batch(jobs, params, runtime, checkpointing=Checkpointing(save, every=1))
    resumed = stylize_batch(jobs, params, runtime,
                            checkpointing=Checkpointing(lambda *a: None, resume=saved[2]))
    alone = stylize_batch(jobs[1:], params, runtime)[0]
    whole = stylize_batch(jobs[1:], params, cpu64)[0]
    for a, b in ((full[1], resumed[1]), (full[1], alone), (full[1], whole)):
        assert b.losses["total"] == pytest.approx(a.losses["total"], rel=1e-9)
        assert (to_tensor(a.image) - to_tensor(b.image)).abs().max() <= 1
    assert full[0].metadata["stages"] == [[32, 24, 16, None], [64, 48, 16, None]]
