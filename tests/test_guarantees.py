"""What a run promises (README, "Guarantees"), each tried as a careless or hostile user would:
it never writes outside --out, never deletes what it did not create, never records a non-finite
result as done, and exits 0 only when every job is done."""

import errno
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from pipeline.accel.runtime import Runtime
from pipeline.bulk import ledger
from pipeline.bulk.checkpoint import load_checkpoint, save_checkpoint
from pipeline.bulk.checkpoint_files import saved_checkpoints
from pipeline.bulk.jobs import Batch, Inspector
from pipeline.bulk.manifest import read_jobs, write_manifest
from pipeline.bulk.runner import RunResult, exit_code
from pipeline.cli import app
from pipeline.gatys.engine import NonFinite
from pipeline.io.pixels import save_image
from tests.conftest import make_photo
from tests.run_helpers import ROOT, cell, run_cli, runner, spawn_run, wait_for


def _one_line_error(result, *words):
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert "Traceback" not in result.output, result.output
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and all(w in errors[0] for w in words), result.output


def _manifest(dataset, name, **columns):
    """The dataset's rows with some cells replaced: column -> {row: value}."""
    rows = pq.read_table(dataset).to_pylist()
    for column, cells in columns.items():
        for r in rows:
            r.setdefault(column, None)
        for i, value in cells.items():
            rows[i][column] = value
    return write_manifest(rows, dataset.parent / name)


# --- never deletes what it did not create ------------------------------------------------

def test_a_refused_run_writes_and_deletes_nothing(dataset, tmp_path):
    out = tmp_path / "u"
    (out / "d").mkdir(parents=True)
    users = [out / ".thesis.tmp.docx", out / "d" / ".cfg.tmpl"]
    for path in users:
        path.write_text("mine")
    bogus = tmp_path / "notparquet.parquet"
    bogus.write_text("not parquet")
    assert run_cli(bogus, out).exit_code == 2
    assert run_cli(dataset, out, "--set", "size=5").exit_code == 2  # every row invalid
    assert all(p.read_text() == "mine" for p in users)
    assert sorted(p.name for p in out.rglob("*")) == [".cfg.tmpl", ".thesis.tmp.docx", "d"]
    fresh = tmp_path / "fresh"
    assert run_cli(dataset, fresh, "--set", "size=5").exit_code == 2
    assert not fresh.exists()  # not even the folder


@pytest.mark.parametrize("name", ["a[1].png", "a:bee:.png", "[red]a[/red].png"])
def test_a_file_is_named_as_it_is_in_every_line_said(tmp_path, name):
    """Rich would read markup ([red]) and emoji codes (:bee:) in a message: a file's name in an
    error, a warning or a log line must stay the name, for the user and for grep."""
    manifest = write_manifest([{"content": name, "style": "s.png"}], tmp_path / "m.parquet")
    refused = run_cli(manifest, tmp_path / "out")
    assert refused.exit_code == 2 and f"invalid row 0: {tmp_path / name}: no such" in (
        refused.output), refused.output
    skipped = run_cli(manifest, tmp_path / "out", "--skip-bad-rows")
    assert f"skipped row 0: {tmp_path / name}: no such" in skipped.output, skipped.output


def test_a_run_lists_the_first_invalid_rows_and_validate_lists_them_all(tmp_path):
    from pipeline.cli.progress import LISTED

    manifest = tmp_path / "m.parquet"
    write_manifest([{"content": f"gone{i}.png", "style": "gone.png"} for i in range(LISTED + 5)],
                   manifest)
    run = run_cli(manifest, tmp_path / "out")
    listed = [line for line in run.output.splitlines() if line.startswith("invalid row ")]
    assert run.exit_code == 2 and len(listed) == LISTED, run.output
    # the command that lists them all, as the run saw them (its --out and --set): run as said
    said = re.search(r"\.\.\. and 5 more \((pipeline manifest validate .*) lists them all\)",
                     run.output)
    assert said, run.output
    command = shlex.split(said.group(1))
    assert command[3:] == [str(manifest), "--out", str(tmp_path / "out"), "--set", "size=32",
                           "--set", "iterations=6"], command
    valid = runner.invoke(app, command[1:], terminal_width=300)
    listed = [line for line in valid.output.splitlines() if line.startswith("invalid row ")]
    assert valid.exit_code == 2 and len(listed) == LISTED + 5
    assert f"gone{LISTED + 4}.png" in listed[-1]


# --- never writes outside --out, never onto an input --------------------------------------

def test_outputs_stay_inside_out_and_off_the_inputs(dataset, tmp_path):
    out = tmp_path / "out"
    (out / "pics").mkdir(parents=True)
    inside = out / "pics" / "photo.png"
    make_photo().save(inside)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (out / "link").symlink_to(elsewhere)
    (out / "evil.png").symlink_to(elsewhere / "target.png")  # a link as the file itself
    manifest = _manifest(dataset, "hostile.parquet",
                         content={0: str(inside)},
                         output={0: "pics/photo.png", 1: "link/x.png", 2: "a.png",
                                 3: "sub/../a.png", 4: "evil.png"})
    result = runner.invoke(app, ["manifest", "validate", str(manifest), "--out", str(out)],
                           terminal_width=400)
    assert result.exit_code == 2
    assert "row 0: output 'pics/photo.png' is one of the job's own input images" in result.output
    assert "row 1: output 'link/x.png' resolves to" in result.output
    assert "outside the --out folder" in result.output
    assert "row 3: output a.png duplicates row 2" in result.output
    assert "row 4: output 'evil.png' resolves to" in result.output
    photo = inside.read_bytes()
    result = run_cli(manifest, out, "--skip-bad-rows")
    assert result.exit_code == 1, result.output
    assert inside.read_bytes() == photo and not list(elsewhere.iterdir())
    assert (out / "a.png").is_file()


def test_rows_whose_default_names_clash_are_refused_with_the_way_out(tmp_path, painting_path):
    """Default output names are made of the files' names, so x/photo.jpg and y/photo.jpg
    land on one: the later row is refused, saying so; an output column names them apart."""
    for folder in ("x", "y"):
        (tmp_path / folder).mkdir()
        make_photo(seed=len(folder)).save(tmp_path / folder / "photo.png")
    rows = [{"content": f"{folder}/photo.png", "style": str(painting_path)}
            for folder in ("x", "y", "x")]
    clash = write_manifest(rows, tmp_path / "clash.parquet")
    result = runner.invoke(app, ["manifest", "validate", str(clash)], terminal_width=400)
    assert result.exit_code == 2
    hint = "whose other inputs have the same file names: give an output column"
    lines = result.output.splitlines()
    assert "invalid row 1: output photo__painting__" in lines[0] and hint in lines[0]
    assert lines[1].startswith("invalid row 2") and lines[1].endswith("duplicates row 0")
    named = write_manifest([{**row, "output": f"{i}.png"} for i, row in enumerate(rows)],
                           tmp_path / "named.parquet")
    result = runner.invoke(app, ["manifest", "validate", str(named)])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("spelling", ["itself", "through a folder not there yet", "a link"])
def test_stylize_refuses_to_write_over_its_input(photo_path, painting_path, spelling):
    before = photo_path.read_bytes()
    output = {"itself": photo_path,
              "through a folder not there yet": photo_path.parent / "new" / ".." / photo_path.name,
              "a link": photo_path.parent / "link.png"}[spelling]
    if spelling == "a link":
        output.symlink_to(photo_path)
    result = runner.invoke(app, ["stylize", str(photo_path), str(painting_path), "-o",
                                 str(output), "--size", "32", "--iterations", "2"])
    assert result.exit_code == 2
    _one_line_error(result, "would overwrite one of the input images")
    assert photo_path.read_bytes() == before


# --- non-finite results are failures ------------------------------------------------------

def test_a_diverging_job_fails_with_its_reason_and_writes_no_image(dataset, tmp_path):
    out = tmp_path / "out"
    result = run_cli(dataset, out, "--set", "style_weight=1e38", "--workers", "1")
    assert result.exit_code == 1, result.output
    assert not list(out.glob("*.png"))
    rows = ledger.read(out).values()
    assert len(rows) == 6 and all(r["status"] == "failed" and "inf/NaN" in r["error"]
                                  for r in rows)
    assert not saved_checkpoints(out)
    again = run_cli(dataset, out, "--set", "style_weight=1e38")
    assert again.exit_code == 1 and cell(again.output, "done before (skipped)") == "0"


def test_stylize_reports_divergence_in_one_line(photo_path, painting_path, tmp_path):
    output = tmp_path / "o.png"
    result = runner.invoke(app, ["stylize", str(photo_path), str(painting_path), "-o",
                                 str(output), "--size", "32", "--iterations", "3",
                                 "--style-weight", "1e38", "--quiet"])
    assert result.exit_code == 1
    _one_line_error(result, "inf/NaN at iteration 0")
    assert not output.exists()


def test_a_diverged_job_fails_alone_and_the_rest_of_its_batch_runs_again(
        dataset, tmp_path, monkeypatch):

    import pipeline.bulk.worker as worker_module

    real, calls = worker_module.stylize_prepared, []

    def diverge_once(prepared, *args, **kwargs):
        calls.append(len(prepared))
        if len(calls) == 1:
            raise NonFinite([1], 4)
        return real(prepared, *args, **kwargs)

    monkeypatch.setattr(worker_module, "stylize_prepared", diverge_once)
    out = tmp_path / "out"
    jobs = [Inspector()(j) for j in read_jobs(dataset, out, {"size": 32, "iterations": 2})]
    batch = [j for j in jobs if j.size == jobs[0].size][:3]
    worker = worker_module.Worker(0, Runtime.create("cpu", "fp32", channels_last=False), out, 0,
                                  [].append)
    worker.run(Batch(tuple(batch)))
    assert calls == [3, 2]
    rows = ledger.read(out)
    assert [rows[j.id]["status"] for j in batch] == ["done", "failed", "done"]
    assert "inf/NaN at iteration 4" in rows[batch[1].id]["error"]
    assert not batch[1].spec.output.exists() and batch[0].spec.output.exists()


# --- checkpoints are checked -------------------------------------------------------------

def test_a_damaged_checkpoint_restarts_its_batch(tmp_path, caplog):
    path = tmp_path / "b.pt"
    images = torch.rand(2, 3, 64, 64) * 255
    save_checkpoint(path, ["k1", "k2"], 40, images, {"pairs": torch.rand(2, 4, 2, 12288)})
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 4000] = bytes(4000)  # same size, zeros inside the tensors
    path.write_bytes(bytes(data))
    assert load_checkpoint(path, ["k1", "k2"]) is None
    assert not path.exists()
    assert "checksum does not match" in caplog.text


# --- exit 0 only when every job is done ---------------------------------------------------

def _children(pid):
    """{child pid: its command line} of process `pid`."""
    found = {}
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError):
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found[int(entry.name)] = cmdline
    return found


def _workers_of(pid):
    """The worker processes of a run: the children of its multiprocessing fork server."""
    servers = [p for p, cmdline in _children(pid).items() if "forkserver" in cmdline]
    return [w for server in servers for w in _children(server)]


def test_a_killed_worker_s_batch_is_taken_over_and_the_run_completes(dataset, tmp_path):
    out = tmp_path / "out"
    proc = spawn_run(dataset, out, 20)
    try:
        wait_for(lambda: saved_checkpoints(out) and len(_workers_of(proc.pid)) == 2)
        os.kill(_workers_of(proc.pid)[0], signal.SIGKILL)
        text = proc.communicate(timeout=600)[0]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, text
    assert "died (killed by signal 9)" in text and "its batch goes to the next worker free" in text
    rows = ledger.read(out).values()
    assert len(rows) == 6 and all(r["status"] == "done" for r in rows)
    assert len(list(out.glob("*.png"))) == 6


def test_a_driver_killed_alone_takes_its_workers_with_it_and_a_rerun_resumes(dataset, tmp_path):
    """kill -9 of the driver's pid alone (the OOM killer's way), while one worker optimizes and
    the other, its job done, waits for work: both leave (the busy one checkpointed) instead of
    holding their memory forever, nothing is printed after the kill, and a rerun resumes."""
    rows = pq.read_table(dataset).to_pylist()[:2]
    for row, iterations in zip(rows, (300, 4), strict=True):
        row.update(iterations=iterations, tol=0.0)
    manifest = write_manifest(rows, dataset.parent / "long-and-short.parquet")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "pipeline", "run", str(manifest), "--out", str(out),
           "--devices", "cpu", "--workers", "2", "--batch-size", "1", "--precision", "fp32",
           "--set", "size=32", "--checkpoint-every", "10", "--checkpoint-budget", "1"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True, text=True)
    workers: list[int] = []
    try:
        wait_for(lambda: len(list(out.glob("*.png"))) == 1 and saved_checkpoints(out)
                 and len(_workers_of(proc.pid)) == 2)
        workers = _workers_of(proc.pid)
        os.kill(proc.pid, signal.SIGKILL)
        text = proc.communicate(timeout=60)[0]  # the end of output: every process is gone
    finally:
        if proc.poll() is None or any(Path(f"/proc/{w}").exists() for w in workers):
            os.killpg(proc.pid, signal.SIGKILL)
    assert "leaked" not in text and "Traceback" not in text, text
    assert saved_checkpoints(out)
    rerun = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "resuming from its checkpoint" in rerun.stdout + rerun.stderr
    assert len(list(out.glob("*.png"))) == 2 and not saved_checkpoints(out)


def test_pending_jobs_mean_a_nonzero_exit():
    assert exit_code(RunResult(total=3, done_before=3)) == 0
    assert exit_code(RunResult(total=3, done_before=1, pending=2)) == 1
    assert exit_code(RunResult(total=3, done_before=1, interrupted=signal.SIGTERM)) == 143


# --- disk full -----------------------------------------------------------------------------

def test_a_failed_output_or_ledger_write_stops_the_worker_and_records_nothing(
        dataset, tmp_path, monkeypatch):

    import pipeline.bulk.worker as worker_module

    out = tmp_path / "out"
    jobs = [Inspector()(j) for j in read_jobs(dataset, out, {"size": 32, "iterations": 2})]
    worker = worker_module.Worker(0, Runtime.create("cpu", "fp32", channels_last=False), out, 0,
                                  [].append)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    pair = tuple(j for j in jobs if j.size == jobs[0].size)[:2]
    # a fixed batch, then one in slots
    for target in ("save_image", "ledger.append"):
        for batch in (Batch((jobs[0],)), Batch(pair, slots=1)):
            with monkeypatch.context() as m:
                m.setattr(worker_module if target == "save_image" else worker_module.ledger,
                          target.split(".")[-1], full)
                with pytest.raises(worker_module.WriteFailed, match="no space left on"):
                    worker.run(batch)
    assert not ledger.read(out)  # nothing recorded as failed: a plain rerun picks them up
    written = []

    def full_once(image, path, *args, **kwargs):  # the disk fills, then has room again
        written.append(path)
        if len(written) == 1:
            full()
        return save_image(image, path, *args, **kwargs)

    for output in out.rglob("*.png"):  # written before a failed ledger write: done
        output.unlink()
    monkeypatch.setattr(worker_module, "save_image", full_once)
    with pytest.raises(worker_module.WriteFailed, match="no space left on"):
        worker.run(Batch(pair, slots=1))
    assert len(written) == 1 and not list(out.rglob("*.png"))  # nothing after the failure


def test_a_store_that_stops_answering_mid_batch_stops_the_worker_and_records_nothing(
        dataset, tmp_path, monkeypatch):
    """Reading a job's checkpoint from a run folder in a bucket whose store went away: not the
    job's fault, so the worker says so (the run stops) and fails nothing, in slots and in fixed
    batches alike."""

    import pipeline.bulk.worker as worker_module
    from pipeline.bulk.events import CannotWrite
    from pipeline.errors import StoreUnavailable

    out = tmp_path / "out"
    jobs = [Inspector()(j) for j in read_jobs(dataset, out, {"size": 32, "iterations": 2})]
    jobs = tuple(j for j in jobs if j.size == jobs[0].size)[:2]
    gone = "s3://bucket/out/.checkpoints/a.pt: cannot reach the store at http://127.0.0.1:9"

    def unreachable(*args, **kwargs):
        raise StoreUnavailable(gone)

    monkeypatch.setattr(worker_module, "load_checkpoint", unreachable)
    events = []
    worker = worker_module.Worker(0, Runtime.create("cpu", "fp32", channels_last=False), out, 0,
                                  events.append)
    for slots in (2, 0):
        assert not worker.serve(Batch(jobs, slots=slots))
        assert isinstance(events[-1], CannotWrite) and events[-1].message == gone
    assert not ledger.read(out)


def _tmpfs(path: Path, size: str, *options: str) -> None:
    path.mkdir()
    opts = ",".join((f"size={size}", *options))
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)],
                          capture_output=True)
    if done.returncode:
        pytest.skip("needs a tmpfs mount (root in a mount namespace that allows it)")


def _fill(folder: Path, leave: int) -> Path:
    """A file that leaves about `leave` bytes free on folder's file system."""
    filler = folder / "filler"
    free = shutil.disk_usage(folder).free
    with open(filler, "wb") as f:
        f.write(bytes(max(0, free - leave)))
    return filler


def test_a_full_disk_stops_the_run_and_a_plain_rerun_finishes_it(dataset, tmp_path):
    out = tmp_path / "small"
    _tmpfs(out, "4m")
    try:
        filler = _fill(out, 0)
        result = run_cli(dataset, out, "--workers", "1")
        assert result.exit_code == 2  # not even the first write fits: refused up front
        _one_line_error(result, "no space left on")
        filler.unlink()
        filler = _fill(out, 200_000)  # the outputs fit, checkpoints (~1 MB each) do not
        result = run_cli(dataset, out, "--workers", "1", "--set", "iterations=6",
                         "--checkpoint-every", "5", "--checkpoint-budget", "1")
        assert result.exit_code == 0, result.output
        assert "cannot write a checkpoint" in result.output
        assert "no space left on" in result.output
        filler.unlink()
        stem = dataset.parent / "more.parquet"
        write_manifest([{**r, "output": f"big/{i}.png", "size": 256}
                        for i, r in enumerate(pq.read_table(dataset).to_pylist())], stem)
        filler = _fill(out, 150_000)  # about one 256 px output
        stopped = run_cli(stem, out, "--workers", "1", "--set", "iterations=1")
        assert stopped.exit_code == 1, stopped.output
        assert "no space left on" in cell(stopped.output, "stopped")
        assert not [r for r in ledger.read(out).values() if r["status"] == "failed"]
        filler.unlink()
        finished = run_cli(stem, out, "--workers", "1", "--set", "iterations=1")
        assert finished.exit_code == 0, finished.output
        assert len(list((out / "big").glob("*.png"))) == 6
    finally:
        subprocess.run(["umount", "-l", str(out)], check=False)


def test_unwritable_destinations_are_refused_before_any_work(dataset, tmp_path, photo_path,
                                                             painting_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    result = run_cli(dataset, a_file)
    assert result.exit_code == 2
    _one_line_error(result, "is a file, not a folder")
    result = runner.invoke(app, ["stylize", str(photo_path), str(painting_path), "-o",
                                 str(a_file / "o.png")])
    assert result.exit_code == 2
    _one_line_error(result, "--output", "exists and is not a folder")
    readonly = tmp_path / "ro"
    _tmpfs(readonly, "1m", "ro")
    try:
        started = time.perf_counter()
        result = runner.invoke(app, ["stylize", str(photo_path), str(painting_path), "-o",
                                     str(readonly / "o.png"), "--size", "64"])
        assert result.exit_code == 2
        _one_line_error(result, "read-only file system")
        assert time.perf_counter() - started < 60  # refused, not optimized for minutes first
        result = run_cli(dataset, readonly)
        assert result.exit_code == 2
        _one_line_error(result, "read-only file system")
    finally:
        subprocess.run(["umount", "-l", str(readonly)], check=False)


def test_weights_that_are_not_weights_are_a_one_line_error(photo_path, painting_path, tmp_path):
    for name, data in (("w.jpg", None), ("w.pth", b"garbage" * 100),
                       ("w.safetensors", b"\x10" * 64)):
        path = tmp_path / name
        if data is None:
            make_photo().save(path, format="JPEG")
        else:
            path.write_bytes(data)
        result = runner.invoke(app, ["stylize", str(photo_path), str(painting_path), "-o",
                                     str(tmp_path / "o.png"), "--weights", str(path)])
        assert result.exit_code == 2, (name, result.output)
        _one_line_error(result, str(path), "not a weights file")


# --- done means: the requested output exists and is the job's --------------------------------

def test_done_means_the_requested_output_exists_and_carries_its_key(dataset, tmp_path):
    out = tmp_path / "out"
    assert run_cli(dataset, out).exit_code == 0
    outputs = sorted(out.glob("*.png"))
    renamed = _manifest(dataset, "renamed.parquet", output={0: "b.png"})
    result = run_cli(renamed, out)
    assert result.exit_code == 0 and cell(result.output, "done now") == "1"
    assert (out / "b.png").is_file()
    outputs[1].write_bytes(b"garbage over an output")
    outputs[2].write_bytes(outputs[2].read_bytes()[:300])  # cut short
    result = run_cli(dataset, out)
    assert result.exit_code == 0 and cell(result.output, "done now") == "2"
    assert all(Image.open(p).size == (32, 24) or Image.open(p).size == (24, 32)
               for p in outputs)
    copy = tmp_path / "copy"  # a copied run folder: paths in its ledger are relative to it
    shutil.copytree(out, copy, symlinks=True, copy_function=shutil.copy2)
    (copy / outputs[3].name).unlink()
    result = run_cli(dataset, copy)
    assert result.exit_code == 0 and cell(result.output, "done now") == "1"
    assert (out / outputs[3].name).is_file()


def test_rows_that_share_a_key_are_counted_apart(dataset, tmp_path):
    out = tmp_path / "out"
    rows = pq.read_table(dataset).to_pylist()[:1]
    manifest = write_manifest([{**rows[0], "output": "a.png"}, {**rows[0], "output": "b.png"}],
                              dataset.parent / "twice.parquet")
    assert run_cli(manifest, out).exit_code == 0
    status = runner.invoke(app, ["status", str(out)], terminal_width=200)
    assert cell(status.output, "jobs") == "2" and cell(status.output, "done") == "2"
    assert cell(status.output, "pending") == "0"


def test_job_keys_are_what_earlier_versions_made():
    """A finished output carries its job's key, and a rerun finds it done by that key: a key
    that changed would have every run folder redo every job after an upgrade. So a parameter
    added later must leave the key alone at its default (its declaration's `key`). These are
    keys of jobs at today's defaults."""
    from fractions import Fraction

    from pipeline.gatys.keys import job_key
    from pipeline.gatys.params import StyleParams
    from pipeline.video.params import VideoParams
    from pipeline.video.part import ClipPart, clip_key

    params = StyleParams()
    assert job_key("a" * 64, ["b" * 64], params) == (
        "9bc196e50b60987fe4e69a313abb138ffded21b2876cf9ca6ee75f3819c1684b")
    assert job_key("a" * 64, ["b" * 64, "c" * 64], params.replace(size=256), "d" * 64,
                   {"masks": ["m"]}) == (
        "b2a1089bdf64ae9063df51e8b376a9968b6bb5a0c49cd38ffbadbd2c1fd15be0")
    part = ClipPart(None, Fraction(24000, 1001), 1.5, None, 10)
    assert clip_key("v" * 64, part, ["s" * 64], params, VideoParams()) == (
        "6188e7f09cc8b79bd6d74acc81a44990a8ac087635fc878dc10b137f27b9dfdd")


# --- an output is made from the files its key names -------------------------------------------

def test_an_input_rewritten_after_the_scan_fails_its_job_and_a_rerun_makes_the_new_one(
        dataset, tmp_path):
    """A content and a style file replaced between the run's scan and their jobs' reads: those
    jobs would write the new pixels under the old files' key (and be taken as done if the old
    files came back). They fail naming the file, the job whose files stayed finishes, nothing
    is written for them, and the next run keys the new files and makes them. In slots and in
    fixed batches alike."""
    import pipeline.bulk.worker as worker_module
    from pipeline.bulk.runner import plan

    def scan(out):
        jobs = [Inspector()(j) for j in read_jobs(dataset, out, {"size": 32, "iterations": 2})]
        return [j for j in jobs if j.size == jobs[0].size]  # c0 and c2, each with s0 and s1

    outs = {slots: tmp_path / f"out{slots}" for slots in (2, 0)}
    scanned = {slots: scan(out) for slots, out in outs.items()}
    first = scanned[2][0].spec
    content, style = first.content, first.styles[-1]
    make_photo((64, 48), seed=7).save(content)
    make_photo((64, 48), seed=8).save(style)
    runtime = Runtime.create("cpu", "fp32", channels_last=False)
    for slots, out in outs.items():
        worker = worker_module.Worker(0, runtime, out, 0, lambda event: None)
        assert worker.serve(Batch(tuple(scanned[slots]), slots=slots))
        rows = ledger.read(out)
        for job in scanned[slots]:
            row, rewritten = rows[job.id], job.spec.content == content or style in job.spec.styles
            assert row["status"] == (ledger.FAILED if rewritten else ledger.DONE), row
            assert job.spec.output.exists() != rewritten
            if rewritten:
                assert "changed since the run's scan" in row["error"], row
                assert str(content if job.spec.content == content else style) in row["error"]
        again = plan(scan(out), out, retry_failed=False)
        assert (len(again.done), len(again.todo), again.failed_before) == (1, 3, 0)


def test_a_rerun_s_scan_reads_no_image_whole_and_a_stale_digest_is_read_again(
        dataset, tmp_path, monkeypatch):
    """`pipeline run` keys jobs by their files' bytes; a rerun of a large dataset must not
    read it all again for that, so each digest is remembered by the file's identity. One
    that went stale (a rewrite within the clock's resolution keeps the identity) fails its
    job as a rewrite does, and is forgotten: the next scan reads the file and keys it anew."""
    import pipeline.bulk.worker as worker_module
    from pipeline.bulk.runner import plan
    from pipeline.bulk.scan import scan
    from pipeline.io import files
    from pipeline.io.cache_entries import entries

    cache, out = tmp_path / "cache", tmp_path / "out"
    monkeypatch.setattr(files, "REMEMBER_FROM", 0)  # the drawn images are small
    reads = []
    digest = files.file_digest
    monkeypatch.setattr(files, "file_digest", lambda p: reads.append(Path(p).name) or digest(p))

    def keys():
        found = scan(dataset, out, {"size": 32, "iterations": 2}, decode=False, cache=str(cache))
        return found.jobs

    first = keys()
    inputs = {Path(f).name for job in first for f, _ in job.inputs}
    assert sorted(reads) == sorted(inputs)  # each distinct file once
    reads.clear()
    assert [j.key for j in keys()] == [j.key for j in first] and reads == []
    content = first[0].spec.content
    (stale,) = [entry for name in entries(cache, "digests").ours
                if (entry := cache / "digests" / name).read_text() == digest(content)]
    stale.write_text("0" * 64)  # what a rewrite that kept the file's identity leaves
    jobs = keys()
    assert jobs[0].key != first[0].key
    runtime = Runtime.create("cpu", "fp32", channels_last=False, cache=str(cache))
    worker = worker_module.Worker(0, runtime, out, 0, lambda event: None)
    assert worker.serve(Batch(tuple(j for j in jobs if j.spec.content == content)))
    failed = [r for r in ledger.read(out).values() if r["status"] == ledger.FAILED]
    assert failed and all("changed since the run's scan" in r["error"] for r in failed)
    assert not stale.exists()
    again = keys()
    assert [j.key for j in again] == [j.key for j in first]
    assert len(plan(again, out, retry_failed=False).todo) == len(first)


def test_a_failed_job_s_images_are_read_again_by_the_next_scan(dataset, tmp_path,
                                                               monkeypatch):
    """A job may fail for a stale remembered digest, which the worker that found it forgets in
    its own cache: on a cluster, not the cache that keys the next run. So the run forgets the
    failed jobs' digests where it scanned: here c2 is broken past its header, its 2 jobs fail
    in the worker, and the next scan reads c2 and their styles again, nothing else."""
    from pipeline.bulk.scan import scan
    from pipeline.io import files

    cache, out = tmp_path / "cache", tmp_path / "out"
    monkeypatch.setattr(files, "REMEMBER_FROM", 0)  # the drawn images are small
    broken = dataset.parent / "content" / "c2.png"
    broken.write_bytes(broken.read_bytes()[:200])
    result = run_cli(dataset, out, "--cache-dir", str(cache))
    assert result.exit_code == 1 and cell(result.output, "failed") == "2", result.output
    reads = []
    digest = files.file_digest
    monkeypatch.setattr(files, "file_digest", lambda p: reads.append(Path(p).name) or digest(p))
    again = scan(dataset, out, {"size": 32, "iterations": 6}, decode=False, cache=str(cache))
    assert sorted(reads) == ["c2.png", "s0.png", "s1.png"]
    assert len(again.jobs) == 6 and not again.errors


def test_a_video_rewritten_after_the_scan_or_while_stylized_fails_its_job(tmp_path,
                                                                           monkeypatch):
    """The same for a video, whose frames are read as the job goes: rewritten before its job
    starts (then none of it is stylized), or while its frames are being stylized, the job
    fails naming it and no video is written under the old file's key."""
    from fractions import Fraction

    import pipeline.bulk.video_batch as video_batch
    import pipeline.bulk.worker as worker_module
    from pipeline.video.synthetic import camera_clip, drawn_scene, write_clip

    pytest.importorskip("av", reason="the video extra: pip install -e '.[video]'")
    clip, style = tmp_path / "clip.mp4", tmp_path / "style.png"
    make_photo(seed=3).save(style)

    def film(seed):
        write_clip(camera_clip(drawn_scene((160, 120), seed), (48, 36), 2), clip, Fraction(8))

    stylize, stylized = video_batch.stylize_clips, []

    def rewritten_meanwhile(*args, **kwargs):
        stylized.append(when)
        stylize(*args, **kwargs)
        if when == "during":
            film(2)

    runtime = Runtime.create("cpu", "fp32", channels_last=False)
    for when in ("before", "during"):
        film(0)
        out = tmp_path / when
        rows = [{"content": str(clip), "style": str(style), "output": "clip.mp4"}]
        spec, = read_jobs(write_manifest(rows, tmp_path / "m.parquet"), out,
                          {"size": 32, "iterations": 2})
        job = Inspector()(spec)
        if when == "before":
            film(1)
        monkeypatch.setattr(video_batch, "stylize_clips", rewritten_meanwhile)
        assert worker_module.Worker(0, runtime, out, 0, lambda event: None).serve(Batch((job,)))
        row = ledger.read(out)[job.id]
        assert row["status"] == ledger.FAILED and "changed since the run's scan" in row["error"]
        assert not job.spec.output.exists()
    assert stylized == ["during"]


# --- bad paths in a manifest --------------------------------------------------------------

def test_a_folder_or_broken_link_as_an_image_is_a_row_error_not_a_traceback(dataset, tmp_path):
    content = dataset.parent / "content"
    (content / "folder.png").mkdir()
    (content / "gone.png").symlink_to(tmp_path / "nowhere.png")
    manifest = _manifest(dataset, "paths.parquet",
                         content={0: "content/folder.png", 1: "content/gone.png"})
    result = run_cli(manifest, tmp_path / "out", "--skip-bad-rows")
    assert result.exit_code == 1 and "Traceback" not in result.output
    status = runner.invoke(app, ["status", str(tmp_path / "out")], terminal_width=300)
    assert "is a folder, not an image file" in status.output
    assert "broken link" in status.output
    built = tmp_path / "built.parquet"
    result = runner.invoke(app, ["manifest", "build", "--content", str(content), "--style",
                                 str(dataset.parent / "style"), "-o", str(built)],
                           terminal_width=300)
    assert result.exit_code == 0, result.output
    assert "skipped 2" in result.output and "folder.png" in result.output
    assert pq.read_table(built).num_rows == 6


# --- a damaged ledger or run.json does not wedge the folder ----------------------------------

def test_a_damaged_ledger_part_is_set_aside_and_rebuilt_from_the_outputs(dataset, tmp_path):
    out = tmp_path / "out"
    assert run_cli(dataset, out, "--workers", "1", "--batch-size", "1").exit_code == 0
    parts = sorted((out / "ledger").glob("part-*.parquet"))
    parts[0].write_bytes(parts[0].read_bytes()[:100])
    parts[1].write_bytes(b"")
    status = runner.invoke(app, ["status", str(out)], terminal_width=300)
    assert status.exit_code == 0 and "unreadable" in status.output
    result = run_cli(dataset, out)
    assert result.exit_code == 0, result.output
    assert cell(result.output, "done before (skipped)") == "6"
    assert sorted(p.name for p in (out / "ledger" / "quarantine").iterdir()) == sorted(
        p.name for p in parts[:2])
    assert sum(r["status"] == "done" for r in ledger.read(out).values()) == 6
    (out / "run.json").write_text("{not json")
    status = runner.invoke(app, ["status", str(out)], terminal_width=300)
    assert status.exit_code == 0 and "run.json is unreadable" in status.output
    assert cell(status.output, "done") == "6"
    next(out.glob("*.png")).unlink()  # pending again: no command names an unknown manifest
    status = runner.invoke(app, ["status", str(out)], terminal_width=300)
    assert cell(status.output, "pending") == "1" and "resume with" not in status.output


# --- caches --------------------------------------------------------------------------------

def test_non_finite_targets_are_never_cached(tmp_path):
    from pipeline.targets.cache import NonFiniteTargets, TargetCache

    cache = TargetCache(tmp_path / "targets")
    with pytest.raises(NonFiniteTargets, match="inf/NaN"):
        cache.get("k" * 64, lambda: {"relu1_1": torch.tensor([1.0, float("nan")])}, "style x")
    assert not list((tmp_path / "targets").rglob("*.safetensors"))


# --- smaller things ------------------------------------------------------------------------

def test_files_are_written_with_the_umask_s_mode(dataset, tmp_path):
    out = tmp_path / "out"
    old = os.umask(0o022)
    try:
        assert run_cli(dataset, out, "--checkpoint-every", "2", "--checkpoint-budget", "1",
                       "--set", "iterations=3").exit_code == 0
        save_checkpoint(out / ".checkpoints" / "x.pt", ["k"], 1, torch.zeros(1, 3, 4, 4), {})
    finally:
        os.umask(old)
    written = [*out.glob("*.png"), *(out / "ledger").glob("*.parquet"), out / "run.json",
               out / ".checkpoints" / "x.pt"]
    assert {oct(p.stat().st_mode & 0o777) for p in written} == {"0o644"}


def test_decode_errors_name_the_file_and_tiny_inputs_are_warned_about(tmp_path, painting_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG not really")
    result = runner.invoke(app, ["stylize", str(bad), str(painting_path), "-o",
                                 str(tmp_path / "o.png")])
    assert result.exit_code == 2 and "BytesIO" not in result.output
    _one_line_error(result, "bad.png: cannot decode image")
    tiny = tmp_path / "tiny.png"
    make_photo((4, 3)).save(tiny)
    result = runner.invoke(app, ["stylize", str(tiny), str(painting_path), "-o",
                                 str(tmp_path / "o.png"), "--size", "32", "--iterations", "1",
                                 "--quiet"], terminal_width=300)
    assert result.exit_code == 0, result.output
    assert "upscaled 8x to 32x24" in result.output


def test_run_json_lists_each_job_once(dataset, tmp_path):
    out = tmp_path / "out"
    assert run_cli(dataset, out, "--set", "iterations=1").exit_code == 0
    info = json.loads((out / "run.json").read_text())
    assert len(info["jobs"]) == 6 and len({tuple(j) for j in info["jobs"]}) == 6
    assert all(not Path(name).is_absolute() for _, name in info["jobs"])



def test_a_run_finishing_one_last_batch_gives_the_bytes_of_an_uninterrupted_run(dataset,
                                                                                 tmp_path):
    """The same configuration, the same bytes: a rerun with one job left starts one worker,
    which must still get the threads its batch had in the full run (another thread count
    reassociates the convolutions)."""
    args = ("--workers", "2", "--batch-size", "1", "--set", "iterations=20")
    reference, out = tmp_path / "ref", tmp_path / "out"
    assert run_cli(dataset, reference, *args).exit_code == 0
    outputs = sorted(reference.glob("*.png"))
    out.mkdir()
    for path in outputs[1:]:
        shutil.copy2(path, out / path.name)
    result = run_cli(dataset, out, *args)
    assert result.exit_code == 0 and cell(result.output, "done now") == "1"
    assert (out / outputs[0].name).read_bytes() == outputs[0].read_bytes()


# --- an output is never any row's input ------------------------------------------------------

def test_no_output_overwrites_another_row_s_input(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for i, name in enumerate(["a.jpg", "b.jpg", "c.jpg"]):
        make_photo(seed=i).save(folder / name)
    make_photo(seed=5).save(folder / "s.png")
    (folder / "link.jpg").symlink_to(folder / "c.jpg")
    manifest = write_manifest([
        {"content": "a.jpg", "style": "s.png", "output": "b.jpg"},     # row 1's content
        {"content": "b.jpg", "style": "s.png", "output": "x.png"},
        {"content": "link.jpg", "style": "s.png", "output": "y.png"},  # c.jpg, through a link
        {"content": "a.jpg", "style": "b.jpg", "output": "c.jpg"},
        {"content": "a.jpg", "style": "s.png", "output": "z.png", "size": "big"},
        {"content": "b.jpg", "style": "b.jpg", "output": "s.png"},     # an invalid row's input
    ], folder / "m.parquet")
    before = {p.name: p.read_bytes() for p in folder.iterdir() if p.suffix != ".parquet"}
    result = runner.invoke(app, ["manifest", "validate", str(manifest), "--out", str(folder)],
                           terminal_width=400)
    assert result.exit_code == 2 and "4 invalid" in result.output, result.output
    assert "row 0: output b.jpg is an input image of row 1" in result.output
    assert "row 3: output c.jpg is an input image of row 2" in result.output
    assert "row 5: output s.png is an input image of row 0" in result.output
    assert run_cli(manifest, folder).exit_code == 2
    result = run_cli(manifest, folder, "--skip-bad-rows")
    assert result.exit_code == 1 and cell(result.output, "done now") == "2", result.output
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.name in before} == before
    assert (folder / "x.png").is_file() and (folder / "y.png").is_file()


# --- a refused run writes nothing -----------------------------------------------------------

def test_a_refused_run_leaves_a_finished_run_s_records_alone(dataset, tmp_path):
    out = tmp_path / "out"
    assert run_cli(dataset, out).exit_code == 0
    info = (out / "run.json").read_bytes()
    files = sorted(p.relative_to(out) for p in out.rglob("*"))
    more = _manifest(dataset, "more.parquet", output={0: "new.png"})  # a job left to do
    fresh = tmp_path / "fresh"
    refusals = [(["--devices", "cuda"], "CUDA is not available"),
                (["--devices", "tpu"], "unknown device"),
                (["--distributor", "bogus", "--devices", "auto"],
                 "distributor must be one of local, ray"),
                (["--precision", "fp17"], "precision must be one of")]
    for folder in (out, fresh):
        for args, message in refusals:
            result = runner.invoke(app, ["run", str(more), "--out", str(folder),
                                         "--set", "size=32", *args], terminal_width=300)
            assert result.exit_code == 2, (args, result.output)
            _one_line_error(result, message)
    assert (out / "run.json").read_bytes() == info
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == files
    assert not fresh.exists()
    status = runner.invoke(app, ["status", str(out)], terminal_width=200)
    assert cell(status.output, "jobs") == "6" and cell(status.output, "done") == "6"


def test_an_unreachable_ray_cluster_is_refused_in_one_line(dataset, tmp_path):
    pytest.importorskip("ray", reason="the ray extra")
    out = tmp_path / "out"
    assert run_cli(dataset, out).exit_code == 0
    info = (out / "run.json").read_bytes()
    more = _manifest(dataset, "more.parquet", output={0: "new.png"})
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "pipeline", "run", str(more), "--out",
                             str(out), "--distributor", "ray", "--ray-address", "127.0.0.1:1"],
                            capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert len(lines) == 1 and "cannot connect to Ray at 127.0.0.1:1" in lines[0], lines
    assert time.monotonic() - started < 120  # Ray alone retried for minutes, silently
    assert (out / "run.json").read_bytes() == info


# --- numbers out of range -------------------------------------------------------------------

def test_seeds_beyond_64_bits_are_one_line_errors(photo_path, painting_path, tmp_path, dataset):
    result = runner.invoke(app, ["stylize", str(photo_path), str(painting_path), "-o",
                                 str(tmp_path / "o.png"), "--seed", "18446744073709551616"])
    assert result.exit_code == 2
    _one_line_error(result, "seed must be between 0 and 9223372036854775807")
    result = runner.invoke(app, ["manifest", "build", "--content", str(photo_path), "--style",
                                 str(painting_path), "--param", "seed=99999999999999999999999",
                                 "-o", str(tmp_path / "m.parquet")], terminal_width=300)
    assert result.exit_code == 2 and not (tmp_path / "m.parquet").exists()
    _one_line_error(result, "--param", "seed must be between")
    result = run_cli(dataset, tmp_path / "out", "--set", "seed=-1")
    assert result.exit_code == 2 and "seed must be between" in result.output


def test_stylize_refuses_a_trace_folder_and_quiet_is_quiet(photo_path, painting_path, tmp_path):
    folder = tmp_path / "t.parquet"
    folder.mkdir()
    result = runner.invoke(app, ["stylize", str(photo_path), str(painting_path), "-o",
                                 str(tmp_path / "o.png"), "--trace", str(folder)])
    assert result.exit_code == 2 and not (tmp_path / "o.png").exists()
    _one_line_error(result, "--trace", "this is a folder")
    result = runner.invoke(app, ["stylize", str(photo_path), str(painting_path), "-o",
                                 str(tmp_path / "o.png"), "--size", "32", "--iterations", "1",
                                 "--cache-dir", str(tmp_path / "cache"), "-q"])
    assert result.exit_code == 0 and result.output.strip() == "", result.output


def test_a_cache_that_is_a_file_is_named_in_one_line(photo_path, painting_path, tmp_path,
                                                     monkeypatch):
    a_file = tmp_path / "cache"
    a_file.write_text("x")
    monkeypatch.setenv("STYLE_PIPELINE_CACHE", str(a_file))
    result = runner.invoke(app, ["stylize", str(photo_path), str(painting_path), "-o",
                                 str(tmp_path / "o.png"), "--size", "32"], terminal_width=300)
    assert result.exit_code == 2
    _one_line_error(result, f"cache {a_file} (STYLE_PIPELINE_CACHE): is a file, not a folder")
