"""Continuous batching (gatys/slots.py): a job's result does not depend on which jobs share its
batch or when it entered, in fp64 (conftest.cpu64) as the other batching equivalences."""

from dataclasses import replace

import pytest
import torch

from pipeline import StyleJob, StyleParams
from pipeline.api import SlotCalls, prepare, slot_plan, stylize_in_slots, stylize_prepared
from pipeline.gatys.engine import FINITE_EVERY, Interrupted
from pipeline.gatys.slots import _Batch
from pipeline.io.pixels import to_tensor
from tests.conftest import make_painting, make_photo

PARAMS = StyleParams(size=48, iterations=40, tol=0)


def _prepared(seed, params=PARAMS):
    return prepare(StyleJob(make_photo(seed=seed), [make_painting(seed=seed + 10)]), params)


def _in_slots(jobs, runtime, slots, params=PARAMS, **calls):
    """Results by job id, and the order in which jobs were handed out."""
    results, queue = {}, list(jobs)

    def source():
        return queue.pop(0) if queue else None

    def done(batch):
        results.update(batch)

    stylize_in_slots(SlotCalls(source, done, **calls), params, runtime, slots,
                     slot_plan(params, (48, 36), slots, runtime), trace_every=5)
    return results


def _state_at(job, iteration, runtime):
    """Job's state as a run stopped after `iteration` steps saves it."""
    saved, asked = {}, []

    def save(_, state):
        saved["state"] = state

    def stop():
        asked.append(True)  # once a step
        return len(asked) == iteration

    with pytest.raises(Interrupted):
        _in_slots([(0, job, None)], runtime, 1, save=save, stop=stop)
    assert saved["state"].iteration == iteration
    return saved["state"]


def test_a_periodic_checkpoint_is_gathered_only_where_its_saver_wants_it(cpu64, monkeypatch):
    """The loop asks `wants_periodic()` before it gathers a job's state for a periodic
    checkpoint (a copy of its whole L-BFGS history), and before it reads the losses on the
    host for it (on a GPU that waits for the step); a stop saves whatever it says."""
    monkeypatch.setitem(FINITE_EVERY, "cpu", 1000)  # as on a GPU: host reads only when needed
    checks: list[bool] = []
    leaving = _Batch._leaving
    monkeypatch.setattr(_Batch, "_leaving", lambda self, busy, total, check:
                        checks.append(check) or leaving(self, busy, total, check))
    for wanted, saves in ((True, [5, 10, 15]), (False, [])):
        saved: list[int] = []
        asked: list[bool] = []
        checks.clear()
        _in_slots([(0, _prepared(0), None)], cpu64, 1, params=replace(PARAMS, iterations=20),
                  save=lambda _, state, saved=saved: saved.append(state.iteration), every=5,
                  wants_periodic=lambda w=wanted, asked=asked: asked.append(w) or w)
        assert saved == saves and len(asked) == (6 if wanted else 3)  # due at 5, 10, 15
        assert [i + 1 for i, check in enumerate(checks) if check] == saves
    saved = []
    with pytest.raises(Interrupted):
        _in_slots([(0, _prepared(0), None)], cpu64, 1, save=lambda _, s: saved.append(s),
                  every=5, wants_periodic=lambda: False, stop=lambda: len(saved) == 0)
    assert [s.iteration for s in saved] == [1]


def _assert_same(result, alone):
    assert torch.equal(to_tensor(result.image), to_tensor(alone.image))
    torch.testing.assert_close(result.pixels, alone.pixels, rtol=0, atol=1e-3)
    assert result.iterations == alone.iterations
    assert [p["iteration"] for p in result.trace] == [p["iteration"] for p in alone.trace]
    torch.testing.assert_close([p["total"] for p in result.trace],
                               [p["total"] for p in alone.trace], rtol=1e-9, atol=0)


def test_a_job_entering_at_another_jobs_iteration_37_gives_its_image_alone(cpu64):
    """Slots 2: A starts fresh beside C, resumed at its iteration 3 of 40; C ends after 37
    steps and B takes its row at A's iteration 37. A, B and C each equal their run alone."""
    a, b, c = (_prepared(seed) for seed in (0, 3, 6))
    alone = {name: stylize_prepared([job], PARAMS, cpu64, trace_every=5)[0]
             for name, job in (("a", a), ("b", b), ("c", c))}
    entered = []

    def progress(steps):
        entered.append(steps)

    results = _in_slots([(0, a, None), (2, c, _state_at(c, 3, cpu64)), (1, b, None)], cpu64,
                        2, progress=progress)
    assert sorted(results) == [0, 1, 2]
    for job, name in ((0, "a"), (1, "b"), (2, "c")):
        _assert_same(results[job], alone[name])
    # 37 steps of two rows (C's last 37), then B beside A, then B alone in a batch of one
    assert sum(entered) == 3 * 40 - 3


def test_early_stopped_jobs_hand_their_rows_on_and_keep_their_results(cpu64):
    """With early stopping each job stops at its own iteration, as alone; five jobs through
    two rows."""
    params = PARAMS.replace(tol=0.3, tol_window=5)
    jobs = [_prepared(seed, params) for seed in range(5)]
    results = _in_slots([(i, job, None) for i, job in enumerate(jobs)], cpu64, 2, params)
    stopped = 0
    for i, job in enumerate(jobs):
        alone = stylize_prepared([job], params, cpu64, trace_every=5)[0]
        _assert_same(results[i], alone)
        stopped += alone.iterations < params.iterations
    assert stopped == len(jobs)  # every row changed hands early


@pytest.mark.parametrize("where", ["targets", "image"])
def test_a_failed_job_fails_alone_and_its_row_is_refilled(cpu64, where):
    """One slot: a job whose targets cannot be made (NaN content), or whose loss turns NaN in
    its row (a resumed image with NaN pixels), fails with a one-line error; the next job takes
    the row and equals its run alone."""
    bad, good = _prepared(1), _prepared(2)
    resume = None
    if where == "targets":  # a digest of its own: no cached targets of the clean image
        pixels = bad[0].pixels.clone()
        pixels[:, :4, :4] = float("nan")
        bad = (replace(bad[0], pixels=pixels, digest="with-nan"), bad[1])
    else:
        resume = _state_at(bad, 2, cpu64)
        resume.image[:, :4, :4] = float("nan")
    results = _in_slots([(0, bad, resume), (1, good, None)], cpu64, 1)
    assert isinstance(results[0], str) and "\n" not in results[0]
    assert ("targets:" in results[0]) == (where == "targets"), results[0]
    assert "inf/NaN" in results[0]
    _assert_same(results[1], stylize_prepared([good], PARAMS, cpu64, trace_every=5)[0])
