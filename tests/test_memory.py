import copy

import pytest
import torch

from pipeline import Regions, StyleJob, StyleParams, stylize_batch
from pipeline.accel import memory
from pipeline.errors import InputError
from pipeline.gatys.engine import trunk_for
from tests.conftest import make_painting, make_photo
from tests.test_regions import halves


def _one_image_bytes(runtime, params, size):
    trunk, _ = trunk_for(params, runtime)
    return memory.image_bytes(runtime.compute_trunk(trunk), params, size, runtime.channels_last)


def test_estimate_counts_activations_and_lbfgs_history(cpu32):
    params = StyleParams(size=64, iterations=200)
    small = _one_image_bytes(cpu32, params, (64, 48))
    assert _one_image_bytes(cpu32, params, (128, 96)) == pytest.approx(4 * small, rel=0.01)
    # each L-BFGS pair holds a step and a gradient change: two [3, H, W] fp32 images
    short = _one_image_bytes(cpu32, params.replace(lbfgs_history=5), (64, 48))
    assert small - short == pytest.approx(95 * 2 * 3 * 64 * 48 * 4, abs=2)
    assert short > 8 * 64 * 48 * 64  # several 64-channel fp32 activations at full size


def test_a_size_that_cannot_fit_is_a_clear_error(cpu32, monkeypatch):
    params = StyleParams(size=64, iterations=2)
    need = _one_image_bytes(cpu32, params, (64, 48))
    jobs = [StyleJob(make_photo(seed=i), [make_painting()]) for i in range(2)]
    monkeypatch.setattr(memory, "RESERVE", 0)
    monkeypatch.setattr(memory, "available_bytes", lambda device: int(need * 0.5))
    with pytest.raises(InputError, match=r"64x48 px on cpu needs about .* GiB per image"):
        stylize_batch(jobs[:1], params, cpu32)
    # One image fits, two do not: the batch runner's out-of-memory split takes over.
    monkeypatch.setattr(memory, "available_bytes", lambda device: int(need * 1.5 / memory.SAFETY))
    with pytest.raises(torch.OutOfMemoryError, match="a batch of 2"):
        stylize_batch(jobs, params, cpu32)
    assert stylize_batch(jobs[:1], params, cpu32)[0].image.size == (64, 48)


def test_masks_are_counted_where_a_batch_is_planned(cpu32, tmp_path, monkeypatch):
    """Masks add each region's guides and two more of the largest activation (memory.py): a
    batch of two that fits without masks no longer fits whole with two regions each."""
    params = StyleParams(size=64, iterations=2)
    trunk, _ = trunk_for(params, cpu32)
    net = cpu32.compute_trunk(trunk)
    plain = memory.image_bytes(net, params, (64, 48), cpu32.channels_last)
    masked = memory.image_bytes(net, params, (64, 48), cpu32.channels_last, regions=2)
    cost = memory.pixel_cost(net, params.layers, params.content_layers, cpu32.channels_last)
    assert masked - plain == pytest.approx((2 * cost.largest + 2 * memory.REGION_BYTES)
                                           * 64 * 48, abs=2)
    masks = Regions(masks=halves(tmp_path, (64, 48)))
    jobs = [StyleJob(make_photo(seed=i), [make_painting(), make_painting(seed=2)])
            for i in range(2)]
    monkeypatch.setattr(memory, "RESERVE", 0)
    monkeypatch.setattr(memory, "available_bytes",
                        lambda device: int(2 * plain * 1.01 / memory.SAFETY))
    assert len(stylize_batch(jobs, params, cpu32)) == 2
    with pytest.raises(torch.OutOfMemoryError, match="a batch of 2"):
        stylize_batch([StyleJob(j.content, j.styles, masks) for j in jobs], params, cpu32)


def test_free_memory_is_read_on_this_machine():
    free = memory.available_bytes(torch.device("cpu"))
    assert free is None or free > 0


def test_the_probe_s_figures_are_remembered_per_trunk_and_layout(cpu32, tmp_path, monkeypatch):
    """A later process plans without the probe's forward pass: the figures are read from the
    cache, under an entry of their own for each trunk and layout."""
    params = StyleParams(size=64)
    trunk, _ = trunk_for(params, cpu32)
    net = cpu32.compute_trunk(trunk)
    args = (params.layers, params.content_layers)
    first = memory.pixel_cost(net, *args, False, tmp_path)
    assert first == memory._probe(net, *args, False, torch.device("cpu"))
    memory.pixel_cost.cache_clear()  # as a new process
    monkeypatch.setattr(memory, "_probe", lambda *a: pytest.fail("probed again"))
    assert memory.pixel_cost(net, *args, False, tmp_path) == first
    monkeypatch.undo()
    memory.pixel_cost.cache_clear()
    memory.pixel_cost(net, *args, True, tmp_path)
    memory.pixel_cost(copy.deepcopy(trunk).double(), *args, False, tmp_path)  # not the shared one
    from pipeline.io.cache_entries import is_entry

    kept = sorted((tmp_path / "probes").iterdir())
    assert len(kept) == 3 and all(is_entry("probes", p.relative_to(tmp_path / "probes"))
                                  for p in kept)
    memory.pixel_cost.cache_clear()
