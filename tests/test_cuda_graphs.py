"""The CUDA graphs compute what the eager iteration does: the captured objective and gradient,
and the whole captured L-BFGS iteration. These need a GPU: without one they skip (run them
with `make bench-gpu`'s machine: `pytest tests/test_cuda_graphs.py`)."""

import pytest
import torch

from pipeline import Runtime, StyleJob, StyleParams, stylize_batch
from pipeline.accel.cuda_graph import GraphedGradient
from pipeline.api import prepare, setup_batch
from pipeline.gatys.engine import Objective, evaluate_and_backward
from tests.conftest import make_painting, make_photo

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture
def same_kernels(monkeypatch):
    """cuDNN's deterministic algorithms, chosen by shape: the eager and the graphed run then
    run the same kernels with no atomics. Otherwise two runs may differ in the last bits
    (one H200 run had eager and graphed traces 0.3% apart at iteration 6), and L-BFGS
    without a line search, and early stopping's threshold, grow that into different results."""
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)


def test_cuda_graphs_are_off_where_there_is_no_gpu():
    assert not Runtime.create("cpu", cuda_graphs=True).cuda_graphs


def _problem(precision: str, batch: int = 2):
    runtime = Runtime.create("cuda", precision, targets="torch")
    params = StyleParams(size=64, iterations=10)
    jobs = [StyleJob(make_photo(seed=i), [make_painting(seed=i + 10)]) for i in range(batch)]
    problem = setup_batch([prepare(job, params) for job in jobs], params, runtime)
    stage = problem.stages[0]
    return Objective(problem.trunk, stage.targets, params, runtime), problem.x0


@cuda
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_replay_gives_the_eager_terms_and_gradient_at_every_new_input(precision):
    evaluate, x0 = _problem(precision)
    graphed = GraphedGradient(evaluate, x0)
    kept = []
    for k in range(3):
        x = (x0 + 20 * k * torch.randn_like(x0)).requires_grad_(True)
        eager = evaluate_and_backward(evaluate, x)
        terms, grad = graphed(x.detach())
        for name, value in eager.items():
            torch.testing.assert_close(terms[name], value, rtol=1e-4, atol=0)
        torch.testing.assert_close(grad, x.grad, rtol=1e-3, atol=1e-3 * x.grad.abs().max())
        kept.append((grad, x.grad))
    # What a replay returns is a copy: later replays do not overwrite it.
    for grad, expected in kept:
        torch.testing.assert_close(grad, expected, rtol=1e-3, atol=1e-3 * expected.abs().max())


@cuda
def test_a_run_with_graphs_follows_the_eager_run(same_kernels):
    """Same start, same objective: the optimizer gets the replayed gradient."""
    job = StyleJob(make_photo(), [make_painting()])
    params = StyleParams(size=64, iterations=20)
    traces = {}
    for graphs in (False, True):
        runtime = Runtime.create("cuda", "fp32", cuda_graphs=graphs, targets="torch")
        trace = []
        stylize_batch([job], params, runtime, lambda i, t, tr=trace: tr.append(t["total"][0]))
        traces[graphs] = torch.stack(trace)
    assert traces[True][-1] < 0.5 * traces[True][0]
    torch.testing.assert_close(traces[True], traces[False], rtol=1e-3, atol=0)


@cuda
def test_lbfgs_iterations_replay_whole_without_a_host_sync():
    """After its warm-up, a graphed L-BFGS run takes each step as one replay: the objective,
    the direction and the step, with nothing read back on the host."""
    from pipeline.accel.cuda_graph import WARMUP, GraphedRun

    runtime = Runtime.create("cuda", "bf16", targets="torch")
    params = StyleParams(size=64, iterations=20, tol=0)
    jobs = [StyleJob(make_photo(seed=i), [make_painting(seed=i + 10)]) for i in range(2)]
    problem = setup_batch([prepare(job, params) for job in jobs], params, runtime)
    run = runtime.start_run(problem.trunk, problem.x0, problem.stages[0], 0, None, params)
    assert isinstance(run, GraphedRun)
    first = [run.step()["total"] for _ in range(WARMUP + 1)]
    assert run.iteration is not None
    torch.cuda.set_sync_debug_mode("error")
    try:
        later = [run.step()["total"] for _ in range(10)]
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert run.opt.count == WARMUP + 11
    assert run.opt.steps.tolist() == [WARMUP + 11] * 2
    assert torch.all(later[-1] < 0.5 * first[0])


@cuda
def test_rows_entered_into_a_captured_run_give_each_job_its_eager_result(same_kernels):
    """Continuous batching with CUDA graphs: jobs enter the rows of a batch whose iteration is
    captured once (two rows, five jobs stopping early at their own iterations). Each job ends
    as in the same schedule run eagerly, at the same iteration; that a job's result does not
    depend on its batch or when it entered is tested in fp64 on the CPU (test_slots.py)."""
    from pipeline.api import SlotCalls, slot_plan, stylize_in_slots

    params = StyleParams(size=64, iterations=30, tol=0.3, tol_window=5)
    jobs = [prepare(StyleJob(make_photo(seed=i), [make_painting(seed=i + 10)]), params)
            for i in range(5)]
    results = {}
    for graphs in (True, False):
        runtime = Runtime.create("cuda", "fp32", cuda_graphs=graphs, targets="torch")
        queue, results[graphs] = list(enumerate(jobs)), {}
        calls = SlotCalls(lambda q=queue: (*q.pop(0), None) if q else None,
                          results[graphs].update)
        stylize_in_slots(calls, params, runtime, 2, slot_plan(params, (64, 48), 2, runtime))
        assert sorted(results[graphs]) == list(range(5))
    graphed, eager = results[True], results[False]
    assert {r.iterations for r in eager.values()} != {params.iterations}  # some stopped early
    for i in range(5):
        assert graphed[i].iterations == eager[i].iterations
        torch.testing.assert_close(graphed[i].losses["total"], eager[i].losses["total"],
                                   rtol=1e-3, atol=0)
