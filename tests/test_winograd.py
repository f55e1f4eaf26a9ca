"""Winograd convolutions (accel/winograd.py): the same convolution as the direct one to fp32
rounding, forward and backward; chosen per layer by a measured, cached plan; used only where
it applies. No test here depends on this machine's speed."""

from __future__ import annotations

import json

import pytest
import torch

from pipeline import Runtime, StyleParams
from pipeline.accel import memory, winograd
from pipeline.accel.winograd import Plan, WinogradConv, measure_layers, winograd_trunk
from pipeline.errors import InputError
from pipeline.gatys.layers import CONV_NAMES
from pipeline.gatys.vgg import Normalize, VGG19Trunk

needs_nnpack = pytest.mark.skipif(not winograd.available(),
                                  reason="NNPACK does not run on this CPU")


def random_trunk(last: str = "relu3_1") -> VGG19Trunk:
    gen = torch.Generator().manual_seed(0)
    state, channels = {}, 3
    for name in CONV_NAMES[:CONV_NAMES.index(last.replace("relu", "conv")) + 1]:
        out = {1: 64, 2: 128, 3: 256, 4: 512, 5: 512}[int(name[4])]
        state[f"{name}.weight"] = torch.randn(out, channels, 3, 3, generator=gen) / (3 * channels)
        state[f"{name}.bias"] = torch.randn(out, generator=gen) * 0.1
        channels = out
    return VGG19Trunk(state, Normalize((0, 0, 0), (1, 1, 1), False, 1 / 255), "max", last)


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@needs_nnpack
@pytest.mark.parametrize("shape", [(3, 64, 19, 23), (2, 256, 8, 6)])
def test_a_winograd_conv_is_the_convolution_forward_and_backward(shape):
    torch.manual_seed(0)
    n, c, h, w = shape
    direct = torch.nn.Conv2d(c, 2 * c, 3, padding=1).requires_grad_(False)
    fast = WinogradConv(direct, "conv2_1", Plan(random_trunk(), True, None))
    x = torch.randn(n, c, h, w, requires_grad=True)
    grad = torch.randn(n, 2 * c, h, w)
    ours = fast(x)
    (ours_grad,) = torch.autograd.grad(ours, x, grad)
    ref = direct(x)
    (ref_grad,) = torch.autograd.grad(ref, x, grad)
    assert relative(ours, ref) < 1e-5 and relative(ours_grad, ref_grad) < 1e-5
    # each sample is its own call: a sample's result does not depend on its batch
    assert torch.equal(fast(x[1:2]), ours[1:2])


@needs_nnpack
def test_the_winograd_trunk_gives_the_direct_trunks_features_and_gradient():
    trunk = random_trunk()
    fast = winograd_trunk(trunk, True, None)
    assert all(type(layer) is torch.nn.Conv2d for name, layer in trunk.layers.items()
               if name.startswith("conv")), "the direct trunk was changed"
    x = (torch.rand(2, 3, 40, 56) * 255).requires_grad_(True)
    layers = ("relu1_1", "relu2_1", "relu3_1")
    grads = []
    for net in (trunk, fast):
        feats = net(x, layers)
        loss = sum(f.square().mean() for f in feats.values())
        grads.append((feats, *torch.autograd.grad(loss, x)))
    (ref_feats, ref_grad), (feats, grad) = grads
    for name in layers:
        assert relative(feats[name], ref_feats[name]) < 1e-4
    assert relative(grad, ref_grad) < 1e-3


def test_the_plan_is_measured_once_per_size_and_thread_count_and_cached(tmp_path):
    trunk = random_trunk()
    calls = []

    def measure(convs, h, w):
        calls.append((sorted(convs), h, w))
        return {name: (name.startswith("conv2"), name == "conv3_1") for name in convs}

    fast = winograd_trunk(trunk, False, tmp_path)
    plan = fast.layers["conv1_1"].plan
    plan.measure = measure
    fast(torch.rand(1, 3, 40, 56), ("relu3_1",))
    assert calls == [(["conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1"], 40, 56)]
    threads = torch.get_num_threads()
    assert plan.choices[("conv2_2", 20, 28, threads)] == (True, False)  # block 2: halved once
    assert plan.choices[("conv3_1", 10, 14, threads)] == (False, True)
    assert plan.choice("conv1_2", 40, 56) == (False, False)
    fast(torch.rand(2, 3, 40, 56), ("relu3_1",))
    assert len(calls) == 1  # the same size again: planned already
    # another process on this machine reads the cache instead of measuring
    again = winograd_trunk(trunk, False, tmp_path)
    again.layers["conv1_1"].plan.measure = lambda *a: pytest.fail("measured again")
    again(torch.rand(1, 3, 40, 56), ("relu3_1",))
    assert again.layers["conv2_1"].plan.choices == plan.choices
    (entry,) = (tmp_path / "probes").glob("winograd-*.json")
    assert json.loads(entry.read_text())["conv2_1"] == [True, False]
    entry.write_text("{garbage")  # a damaged entry is measured again, not trusted
    third = winograd_trunk(trunk, False, tmp_path)
    third.layers["conv1_1"].plan.measure = measure
    third(torch.rand(1, 3, 40, 56), ("relu3_1",))
    assert len(calls) == 2
    # an unplanned size (a block's crop seen first by a deeper layer) runs directly
    assert plan.choice("conv2_1", 7, 9) == (False, False)


@needs_nnpack
def test_the_memory_probe_plans_nothing_and_counts_what_the_convs_save():
    """The memory probe's pass runs at a size no image uses (memory.PROBE px): a trunk's
    first call there measures no Winograd plan, and counts what its convs save either way."""
    fast = winograd_trunk(random_trunk("relu5_1"), False, None)
    fast.layers["conv1_1"].plan.measure = lambda *a: pytest.fail("planned for the probe")
    params = StyleParams()
    args = (params.layers, params.content_layers, False, torch.device("cpu"))
    every = winograd.planned(fast, winograd.FixedPlan(dict.fromkeys(CONV_NAMES, (True, True))))
    assert memory._probe(fast, *args) == memory._probe(every, *args)
    assert fast.layers["conv1_1"].plan.choices == {}


@needs_nnpack
def test_the_real_measurement_decides_every_conv_both_ways():
    trunk = winograd_trunk(random_trunk("relu2_1"), False, None)
    convs = {n: m for n, m in trunk.layers.items() if isinstance(m, WinogradConv)}
    found = measure_layers(convs, 24, 32)
    assert set(found) == {"conv1_1", "conv1_2", "conv2_1"}
    assert all(isinstance(f, bool) and isinstance(b, bool) for f, b in found.values())


@needs_nnpack
def test_a_plan_is_kept_only_where_a_whole_pass_with_it_beats_the_direct_trunk(monkeypatch):
    """Layers measured faster one by one can make a whole pass slower: the plan is then every
    conv direct. The two passes timed are the trunk's forward and backward to the pixels, one
    by the plan, one direct: the same gradient to fp32 rounding."""
    fast = winograd_trunk(random_trunk("relu2_1"), False, None)
    found = {"conv1_1": (False, False), "conv1_2": (True, True), "conv2_1": (True, False)}
    direct = dict.fromkeys(found, (False, False))
    used: list[bool] = []
    real = winograd._winograd
    monkeypatch.setattr(winograd, "_winograd", lambda *a: used.append(True) or real(*a))
    timed = []

    def fastest(plan_s, direct_s):
        def run(calls, rounds):
            grads = {}
            for name, call in calls.items():
                used.clear()
                (grads[name],) = call()
                timed.append((name, len(used), rounds))
            assert relative(grads["plan"], grads["direct"]) < 1e-3
            return {"plan": plan_s, "direct": direct_s}
        return run

    assert winograd.whole_pass_check(fast, found, 24, 32, fastest(1.0, 1.2)) == found
    assert timed == [("plan", 3, winograd.ROUNDS + 1), ("direct", 0, winograd.ROUNDS + 1)]
    assert winograd.whole_pass_check(fast, found, 24, 32, fastest(1.0, 1.01)) == direct
    assert winograd.whole_pass_check(fast, direct, 24, 32, lambda *a: pytest.fail("timed")) \
        == direct  # nothing to check
    # measured for real, from the trunk's first call (under the plan's lock, which the
    # passes it times do not take): either outcome, every conv planned; and what the check's
    # passes save for their backward stays out of the caller's hooks (the memory probe's)
    counts = [0, 0]
    for call in range(2):  # planned in the first call, not in the second

        def count(t, call=call):
            counts[call] += 1
            return t

        with torch.autograd.graph.saved_tensors_hooks(count, lambda t: t):
            fast(torch.rand(1, 3, 24, 32, requires_grad=True), ("relu2_1",))
    plan = fast.layers["conv1_1"].plan
    assert {key[0] for key in plan.choices} == set(found)
    assert counts[0] == counts[1] > 0


@needs_nnpack
def test_winograd_applies_to_the_fp32_nchw_trunk_on_the_cpu_only():
    assert Runtime.create("cpu", "fp32", channels_last=False).winograd == "auto"
    assert Runtime.create("cpu", "fp32", channels_last=False, winograd=True).winograd == "on"
    assert Runtime.create("cpu", "fp32", channels_last=False, winograd=False).winograd == "off"
    assert Runtime.create("cpu", "fp32", channels_last=True).winograd == "off"
    assert Runtime.create("cpu", "fp64").winograd == "off"
    assert Runtime.create("cpu", "bf16").winograd == "off"
    # the final losses are reported with direct convolutions
    assert Runtime.create("cpu", "fp32", winograd=True).widened().winograd == "off"


def test_winograd_on_where_nnpack_cannot_run_is_one_clear_error(monkeypatch):
    monkeypatch.setattr(winograd, "available", lambda: False)
    with pytest.raises(InputError, match="--winograd on: NNPACK does not run"):
        Runtime.create("cpu", "fp32", winograd=True)
    assert Runtime.create("cpu", "fp32").winograd == "off"  # auto: direct, silently


@needs_nnpack
def test_an_optimization_with_winograd_convs_follows_the_direct_one(monkeypatch):
    from pipeline.api import StyleJob, stylize_batch
    from tests.conftest import assert_follows, make_painting, make_photo

    used = []
    real = winograd._winograd
    monkeypatch.setattr(winograd, "_winograd", lambda *a: used.append(1) or real(*a))
    params = StyleParams(size=48, iterations=12, tol=0)
    job = StyleJob(make_photo(), [make_painting()])
    off = Runtime.create("cpu", "fp32", channels_last=False, winograd=False)
    (direct,) = stylize_batch([job], params, off, trace_every=1)
    assert not used
    on = Runtime.create("cpu", "fp32", channels_last=False, winograd=True)
    (fast,) = stylize_batch([job], params, on, trace_every=1)
    assert used
    assert_follows(fast, direct)
