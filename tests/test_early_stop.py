"""Early stopping (tol, tol_window) and the loss trace, in the engine: each job of a batch stops
alone and ends where it would have alone, and a checkpoint carries both."""

import copy

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from pipeline import StyleJob, StyleParams, stylize_batch
from pipeline.api import job_key
from pipeline.bulk import ledger, traces
from pipeline.cli import app
from pipeline.gatys.convergence import EarlyStop
from pipeline.gatys.engine import Checkpointing
from pipeline.gatys.trace import read_traces
from pipeline.io.images import intermediates_beside
from pipeline.io.pixels import to_tensor
from tests.conftest import make_painting, make_photo
from tests.run_helpers import run_cli, runner

JOBS = [StyleJob(make_photo(seed=0), [make_painting(seed=1)]),
        StyleJob(make_photo(seed=5).transpose(0), [make_painting(seed=7)])]
# Thresholds that these two jobs cross at different iterations, with margins far above fp64
# reassociation (their relative improvements over 5 steps move by ~1e-2 per step).
TOLS = {"lbfgs": 0.3, "adam": 0.2}


def _params(optimizer):
    return StyleParams(optimizer=optimizer, size=48, iterations=40, tol=TOLS[optimizer],
                       tol_window=5)


def test_the_rule_holds_a_sample_once_its_loss_flattens():
    stop = EarlyStop(tol=0.1, window=2, batch=2, device=torch.device("cpu"))
    for totals in [(100, 100), (50, 99), (40, 98), (39, 97), (38, 96)]:
        stop.update(torch.tensor(totals, dtype=torch.float32))
    # sample 0: 50 -> 39 over 2 steps (22%) goes on, 40 -> 38 (5%) stops after step 4;
    # sample 1 improved 2% over its first window and stopped after step 2.
    assert stop.active.tolist() == [False, False]
    assert stop.used.tolist() == [5, 3] and stop.last.tolist() == [5, 3]
    assert stop.all_stopped()


def test_a_spike_is_not_read_as_a_flat_loss():
    """Measured on the lowest loss so far: a transient rise above the loss `window` steps
    earlier does not stop a job that is still descending, and a flat one still stops."""
    stop = EarlyStop(tol=0.1, window=2, batch=2, device=torch.device("cpu"))
    for totals in [(100, 100), (60, 99), (120, 98), (40, 98)]:
        stop.update(torch.tensor(totals, dtype=torch.float32))
        # sample 0 at step 2: 120 is above 100, but its lowest (60) is 40% below it.
        assert stop.active.tolist()[0]
    assert stop.active.tolist() == [True, False]


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


def test_coarse_to_fine_stops_each_stage_and_traces_both(cpu32, small_scales):
    params = StyleParams(size=64, iterations=40, scales=2, tol=0.3, tol_window=3)
    job = StyleJob(make_photo((64, 48)), [make_painting((32, 32))])
    (result,) = stylize_batch([job], params, cpu32, trace_every=1)
    stages = [p["stage"] for p in result.trace]
    assert stages[0] == 0 and stages[-1] == 1 and stages == sorted(stages)
    fine = [p["iteration"] for p in result.trace if p["stage"] == 1]
    assert fine[0] == 20  # the fine stage starts at its own first iteration
    assert result.iterations < 40


def test_only_parameters_that_change_the_image_change_the_key():
    off = StyleParams(tol=0.0)
    key = job_key("c", ["s"], off)
    assert job_key("c", ["s"], off.replace(save_every=10)) == key
    assert job_key("c", ["s"], off.replace(tol_window=10)) == key  # without tol, no effect
    assert {"tol_window", "save_every"}.isdisjoint(off.result_dict())
    default = StyleParams()
    assert job_key("c", ["s"], default) != key
    assert job_key("c", ["s"], default.replace(tol_window=10)) != job_key("c", ["s"], default)
    assert job_key("c", ["s"], default.replace(save_every=10)) == job_key("c", ["s"], default)


def test_tol_and_save_every_as_manifest_columns_in_batches(dataset, tmp_path):
    rows = pq.read_table(dataset).to_pylist()
    stopping = {0, 2, 4}  # one batch of three that stop, one of three that run to the end
    pq.write_table(pa.Table.from_pylist(
        [dict(r, tol=0.3 if i in stopping else 0.0, tol_window=3, save_every=4)
         for i, r in enumerate(rows)]), dataset)
    out = tmp_path / "out"
    result = run_cli(dataset, out, "--set", "iterations=30", "--batch-size", "3")
    assert result.exit_code == 0, result.output
    used = {r["row"]: r["iterations"] for r in ledger.read(out).values()}
    assert all(used[i] < 30 for i in stopping) and all(used[i] == 30 for i in (1, 3, 5)), used
    found = traces.read(out)
    for record in ledger.read(out).values():
        output = out / record["output"]
        saved = [it for it, _ in intermediates_beside([(output, None)])[output]]
        # Every 4 iterations while the job moves (the last one is the output itself).
        assert saved == list(range(4, record["iterations"], 4)), (record["row"], saved)
        assert found[record["key"]][-1]["iteration"] == record["iterations"]


def test_stylize_tol_save_every_and_trace(photo_path, painting_path, tmp_path):
    out, trace = tmp_path / "out.png", tmp_path / "trace.parquet"
    result = runner.invoke(app, ["stylize", str(photo_path), str(painting_path), "-o", str(out),
                                 "--size", "48", "--iterations", "30", "--tol", "0.3",
                                 "--tol-window", "3", "--save-every", "5", "--trace",
                                 str(trace), "--trace-every", "1", "--precision", "fp32"],
                           terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "stopped early by --tol 0.3" in result.output
    (points,) = read_traces(trace).values()
    used = points[-1]["iteration"]
    assert [p["iteration"] for p in points] == list(range(used + 1)) and used < 30
    assert [it for it, _ in intermediates_beside([(out, None)])[out]] == list(range(5, used, 5))
    bad = runner.invoke(app, ["stylize", str(photo_path), str(painting_path), "-o", str(out),
                              "--tol", "nan"])
    assert bad.exit_code == 2 and "tol must be a finite number" in bad.output
