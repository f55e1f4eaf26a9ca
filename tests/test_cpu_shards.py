"""A CPU batch split into shards, one per core: same results as one shard, and checkpoints
that resume with any split."""

import copy
import dataclasses
import threading

import pytest
import torch

from pipeline import StyleJob, StyleParams, stylize_batch
from pipeline.accel.cpu_shards import concat, rows, shard_bounds
from pipeline.gatys.engine import Checkpointing, StageRun
from pipeline.gatys.lbfgs import BatchedLBFGS
from pipeline.io.pixels import to_tensor
from tests.conftest import make_painting, make_photo

JOBS = [StyleJob(make_photo(seed=s), [make_painting(seed=s + 1)]) for s in (0, 5, 9)]


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_a_shard_runs_on_its_thread_count_whatever_other_threads_set_meanwhile():
    """A new shard thread sets its count before its first op; another thread storing a
    different process value in between (a flow thread's first call does) must not change the
    count the shard runs on."""
    from pipeline.accel import cpu_shards

    entered, stored, seen = threading.Event(), threading.Event(), {}

    class Shard:
        def __init__(self, n):
            self.n, self.x = n, torch.zeros(1)

        def step(self):
            if self.n == 0:  # once shard 1 has set its count, another thread stores 3
                assert entered.wait(30)
                other = threading.Thread(target=torch.set_num_threads, args=(3,))
                other.start()
                other.join()
                stored.set()
            else:
                entered.set()
                assert stored.wait(30)
            seen[self.n] = torch.get_num_threads()
            return {"total": torch.ones(1)}

    cpu_shards._pool.cache_clear()  # new threads, as in a new process
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        cpu_shards.ShardedRun([Shard(0), Shard(1)]).step()
    finally:
        torch.set_num_threads(before)
    assert seen == {0: 1, 1: 1}


@pytest.fixture
def unsplit(cpu64):
    return dataclasses.replace(cpu64, split_batches=False)


def traced(params, runtime, jobs=JOBS, **kw):
    trace = []
    results = stylize_batch(jobs, params, runtime,
                            progress=lambda i, t: trace.append(t["total"].clone()), **kw)
    return results, torch.stack(trace)


def assert_same_run(a, b):
    """fp64 runs (conftest.cpu64): only reassociation separates them, ~1e-9 of a level."""
    (res_a, trace_a), (res_b, trace_b) = a, b
    for x, y in zip(res_a, res_b, strict=True):
        assert torch.equal(to_tensor(x.image), to_tensor(y.image))
    torch.testing.assert_close(trace_a, trace_b, rtol=1e-9, atol=0)


def test_one_shard_per_thread_as_even_as_they_go(cpu64, unsplit, two_threads):
    assert cpu64.split_batches
    assert shard_bounds(1, cpu64) == [(0, 1)]
    assert shard_bounds(3, cpu64) == [(0, 2), (2, 3)]
    assert shard_bounds(4, cpu64) == [(0, 2), (2, 4)]
    assert shard_bounds(4, unsplit) == [(0, 4)]


@pytest.mark.parametrize("optimizer", ["lbfgs", "adam"])
def test_split_batch_equals_one_shard(optimizer, cpu64, unsplit, two_threads, monkeypatch):
    """Also: each shard steps on its own thread with one intra-op thread, and the caller's
    thread count is back afterwards."""
    params = StyleParams(optimizer=optimizer, size=64, iterations=8)
    seen = set()
    step = StageRun.step

    def recording(run):
        seen.add((threading.current_thread().name, run.x.shape[0], torch.get_num_threads()))
        return step(run)

    monkeypatch.setattr(StageRun, "step", recording)
    split = traced(params, cpu64)
    assert {(n, t) for _, n, t in seen} == {(2, 1), (1, 1)}
    assert all(name.startswith("shard") for name, _, _ in seen)
    assert len({name for name, _, _ in seen}) == 2
    assert torch.get_num_threads() == 2
    seen.clear()
    whole = traced(params, unsplit)
    assert {(n, t) for _, n, t in seen} == {(3, 2)}
    assert_same_run(split, whole)


def test_checkpoint_resumes_with_another_split(cpu64, unsplit, two_threads):
    """A split run's checkpoint (the shards' optimizer states joined) resumes unsplit to the
    same result, and an unsplit one resumes split. (Adam is left out: its first steps move
    each pixel by about lr * sign(g), so a gradient near zero flips with any reassociation;
    its state is checked below.)"""
    params = StyleParams(size=64, iterations=8)
    for first, then in ((cpu64, unsplit), (unsplit, cpu64)):
        saved = {}

        def save(it, x, state, saved=saved):
            saved[it] = (it, x.clone(), copy.deepcopy(state))

        full = traced(params, first, checkpointing=Checkpointing(save, every=1))
        _, x, state = saved[5]
        assert x.shape[0] == 3 and state["optimizer"]["count"] == 5
        assert state["optimizer"]["steps"].tolist() == [5] * 3
        assert state["optimizer"]["pairs"].shape[:2] == (3, 5)  # the first a zero pair
        resumed = traced(params, then,
                         checkpointing=Checkpointing(lambda *a: None, resume=saved[5]))
        assert_same_run(resumed, (full[0], full[1][5:]))


@pytest.mark.parametrize("optimizer", ["lbfgs", "adam"])
def test_states_split_and_join_exactly(optimizer):
    x = torch.randn(3, 3, 8, 8, requires_grad=True)
    run = StageRun(x, None, lambda v: {"total": v.square().flatten(1).sum(1)}, False)
    run.opt = (BatchedLBFGS(x, max_step=4.0) if optimizer == "lbfgs"
               else torch.optim.Adam([x], lr=1.0))
    for _ in range(3):
        run.step()
    state = run.state_dict()
    joined = concat([rows(state, 0, 2), rows(state, 2, 3)])
    torch.testing.assert_close(joined, state, rtol=0, atol=0)
