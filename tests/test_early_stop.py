"""Early stopping (tol, tol_window) and the loss trace, in the engine: each job of a batch stops
alone and ends where it would have alone, and a checkpoint carries both."""

import copy

import pytest
import torch

from pipeline import StyleJob, StyleParams, stylize_batch
from pipeline.bulk.jobs import job_key
from pipeline.gatys.convergence import EarlyStop
from pipeline.gatys.engine import Checkpointing
from pipeline.io.images import to_tensor
from tests.conftest import make_painting, make_photo

JOBS = [StyleJob(make_photo(seed=0), [make_painting(seed=1)]),
        StyleJob(make_photo(seed=5).transpose(0), [make_painting(seed=7)])]
# Thresholds that these two jobs cross at different iterations, with margins far above fp64
# reassociation (their relative improvements over 5 steps move by ~1e-2 per step).
TOLS = {"lbfgs": 0.3, "adam": 0.2}


def _params(optimizer):
    return StyleParams(optimizer=optimizer, size=64, iterations=40, tol=TOLS[optimizer],
                       tol_window=5)


def test_the_rule_holds_a_sample_once_its_loss_flattens():
    stop = EarlyStop(tol=0.1, window=2, batch=2, device=torch.device("cpu"))
    for i, totals in enumerate([(100, 100), (50, 99), (40, 98), (39, 97), (38, 96)]):
        stop.update(i, torch.tensor(totals, dtype=torch.float32))
    # sample 0: 50 -> 39 over 2 steps (22%) goes on, 40 -> 38 (5%) stops after step 4;
    # sample 1 improved 2% over its first window and stopped after step 2.
    assert stop.active.tolist() == [False, False]
    assert stop.used.tolist() == [5, 3] and stop.last.tolist() == [5, 3]
    assert stop.all_stopped()


@pytest.mark.parametrize("optimizer", ["lbfgs", "adam"])
def test_a_stopped_job_is_held_and_ends_as_it_would_alone(optimizer, cpu64):
    params = _params(optimizer)
    together = stylize_batch(JOBS, params, cpu64, trace_every=5)
    used = [r.iterations for r in together]
    assert len(set(used)) == 2 and max(used) < params.iterations, used
    for job, result in zip(JOBS, together, strict=True):
        (alone,) = stylize_batch([job], params, cpu64, trace_every=5)
        assert alone.iterations == result.iterations
        assert torch.equal(to_tensor(alone.image), to_tensor(result.image))
        assert [p["iteration"] for p in alone.trace] == [p["iteration"] for p in result.trace]
        # Points every 5 iterations while it moves, then its final objective where it stopped.
        points = [p["iteration"] for p in result.trace]
        assert points == [*range(0, result.iterations, 5), result.iterations]
        assert result.trace[-1]["total"] == pytest.approx(result.losses["total"], rel=1e-12)
    off = stylize_batch(JOBS, params.replace(tol=0.0), cpu64)
    assert [r.iterations for r in off] == [40, 40]
    assert all(t.losses["total"] > o.losses["total"] for t, o in zip(together, off, strict=True))


def test_a_checkpoint_carries_the_stopped_jobs_and_the_trace(cpu64):
    params = _params("lbfgs")
    saved = {}

    def save(it, x, state):
        saved[it] = (it, x.clone(), copy.deepcopy(state))

    full = stylize_batch(JOBS, params, cpu64, trace_every=3,
                         checkpointing=Checkpointing(save, every=1))
    first_stop = min(r.iterations for r in full)
    for it in (first_stop - 2, first_stop + 1):  # before and after the first job stopped
        resumed = stylize_batch(JOBS, params, cpu64, trace_every=3,
                                checkpointing=Checkpointing(lambda *a: None, resume=saved[it]))
        for a, b in zip(full, resumed, strict=True):
            assert a.iterations == b.iterations
            assert torch.equal(to_tensor(a.image), to_tensor(b.image))
            assert [p["iteration"] for p in a.trace] == [p["iteration"] for p in b.trace]
            torch.testing.assert_close(torch.tensor([p["total"] for p in b.trace]),
                                       torch.tensor([p["total"] for p in a.trace]),
                                       rtol=1e-9, atol=0)


def test_coarse_to_fine_stops_each_stage_and_traces_both(cpu32):
    params = StyleParams(size=256, iterations=40, scales=2, tol=0.3, tol_window=3)
    job = StyleJob(make_photo((256, 192)), [make_painting((128, 128))])
    (result,) = stylize_batch([job], params, cpu32, trace_every=1)
    stages = [p["stage"] for p in result.trace]
    assert stages[0] == 0 and stages[-1] == 1 and stages == sorted(stages)
    fine = [p["iteration"] for p in result.trace if p["stage"] == 1]
    assert fine[0] == 20  # the fine stage starts at its own first iteration
    assert result.iterations < 40


def test_only_parameters_that_change_the_image_change_the_key():
    base = StyleParams()
    key = job_key("c", ["s"], base)
    assert job_key("c", ["s"], base.replace(save_every=10)) == key
    assert job_key("c", ["s"], base.replace(tol_window=10)) == key  # without tol, no effect
    assert job_key("c", ["s"], base.replace(tol=0.01)) != key
    assert "tol" not in base.result_dict() and "save_every" not in base.result_dict()
