"""Bulk runs, end to end through the CLI, on the CPU with 2 workers and tiny images."""

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from pipeline.bulk import ledger, traces
from pipeline.bulk.build import build_rows
from pipeline.bulk.checkpoint import save_checkpoint
from pipeline.bulk.checkpoint_files import saved_checkpoints
from pipeline.bulk.events import Iteration
from pipeline.bulk.jobs import Batch, Inspector, auto_cpu_workers, default_batch_size
from pipeline.bulk.locks import folder_lock
from pipeline.bulk.manifest import read_jobs, write_manifest
from pipeline.cli import app
from pipeline.io.images import read_metadata
from tests.conftest import make_painting, make_photo
from tests.run_helpers import (
    FAST,
    ONE_BY_ONE,
    ROOT,
    cell,
    images_in,
    make_dataset,
    run_cli,
    runner,
    spawn_run,
    wait_for,
)


def test_an_empty_manifest_is_said_to_be_empty(tmp_path):
    """Nothing failed, so the exit code is 0; but a manifest with no rows is more often a
    query or a glob gone wrong than a plan."""
    import pyarrow as pa

    manifest = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"content": pa.array([], pa.string()),
                             "style": pa.array([], pa.string())}), manifest)
    checked = runner.invoke(app, ["manifest", "validate", str(manifest)])
    assert checked.exit_code == 0
    assert f"warning: {manifest} has no rows" in " ".join(checked.output.split())
    ran = run_cli(manifest, tmp_path / "out", "--no-report")
    assert ran.exit_code == 0, ran.output
    assert f"warning: {manifest} has no rows: nothing to do" in " ".join(ran.output.split())
    assert cell(ran.output, "jobs") == "0"


def test_manifest_build_is_a_cross_product(dataset):
    table = pq.read_table(dataset)
    assert table.num_rows == 6 and set(table.column_names) == {"content", "style"}
    assert table.column("content")[0].as_py() == "content/c0.png"  # relative to the manifest
    rows = build_rows([Path("a.png")], [Path("s.png")], {"size": [32, 64], "seed": [1, 2]})
    assert len(rows) == 4 and {r["size"] for r in rows} == {32, 64}


def test_six_jobs_run_to_completion_and_rerun_skips_them(dataset, tmp_path):
    out = tmp_path / "out"
    stale = [out / ".checkpoints" / ".ab.pt.x1abcd_9.style-pipeline-tmp.pt",
             out / ".c0.png.x2abcd_9.style-pipeline-tmp.png",
             out / "ledger" / ".part-1.parquet.k3j4h5g6.style-pipeline-tmp.parquet"]
    users = [out / ".thesis.tmp.docx", out / "d" / ".cfg.tmpl", out / "d" / ".a.png.tmp.png"]
    for path in stale + users:  # left by a run killed mid-write; a user's own files
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half")
    result = run_cli(dataset, out, "--workers", "2")
    assert result.exit_code == 0, result.output
    assert not any(p.exists() for p in stale)
    assert all(p.read_bytes() == b"half" for p in users)
    outputs = sorted(out.glob("*.png"))
    assert len(outputs) == 6
    rows = ledger.read(out)
    assert len(rows) == 6 and all(r["status"] == "done" for r in rows.values())
    assert all(r["loss_total"] > 0 and r["iterations"] == 6 for r in rows.values())
    assert {(read_metadata(p)["job_key"], p.name) for p in outputs} == set(rows)
    mtimes = {p: p.stat().st_mtime_ns for p in outputs}
    parts = sorted((out / "ledger").glob("*.parquet"))
    assert cell(result.output, "done now") == "6"

    # Checkpoints a run killed between its ledger write and the unlink, or a rerun with other
    # batching, leaves behind: swept once all their jobs are done, kept while any is not.
    keys = sorted(key for key, _ in rows)
    orphan, live = out / ".checkpoints" / "orphan.pt", out / ".checkpoints" / "live.pt"
    save_checkpoint(orphan, keys[:4], 3, torch.zeros(4, 3, 8, 8), {})
    save_checkpoint(live, [keys[0], "a job of another manifest"], 3, torch.zeros(2, 3, 8, 8), {})
    again = run_cli(dataset, out, "--workers", "2")
    assert again.exit_code == 0, again.output
    assert not orphan.exists() and live.exists()
    assert cell(again.output, "checkpoints removed").startswith("1 of finished batches")
    assert cell(again.output, "done now") == "0"
    assert cell(again.output, "done before (skipped)") == "6"
    assert cell(again.output, "devices") == "none"  # no worker started
    assert {p: p.stat().st_mtime_ns for p in outputs} == mtimes
    assert sorted((out / "ledger").glob("*.parquet")) == parts
    status = runner.invoke(app, ["status", str(out)], terminal_width=200)
    assert status.exit_code == 0 and "images/hour" in status.output
    assert "pending" in status.output


def test_a_content_only_one_job_reads_keeps_its_targets_out_of_the_cache(dataset, tmp_path):
    """c0 with both styles, c1 and c2 with one each: c0's features are cached (its second job
    reads them), the others' not, nor, with matched colours, the styles recoloured for them."""
    from safetensors.torch import load_file

    rows = [r for r in pq.read_table(dataset).to_pylist()
            if "c0" in r["content"] or "s0" in r["style"]]
    manifest = write_manifest(rows, dataset.parent / "mixed.parquet")
    for color, contents, styles in (("style", 1, 2), ("match", 1, 2)):
        cache = tmp_path / f"cache-{color}"
        result = run_cli(manifest, tmp_path / color, "--set", f"color={color}", "--cache-dir",
                         str(cache), "--targets", "torch", "--winograd", "off")
        assert result.exit_code == 0 and cell(result.output, "done now") == "4", result.output
        kept = [load_file(p) for p in (cache / "targets").rglob("*.safetensors")]
        assert sum(all(t.dim() == 3 for t in k.values()) for k in kept) == contents, color
        assert sum(all(t.dim() == 2 for t in k.values()) for k in kept) == styles, color


def test_a_tilde_the_shell_left_is_the_home_folder(dataset, tmp_path, monkeypatch):
    """`--out=~/x` reaches us unexpanded (the shell expands ~ only at a word's start): a
    folder named ~ in the working folder is what a later `rm -rf ~` was made of."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    result = run_cli(dataset, "~/styled", "--no-report")
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "home" / "styled").glob("*.png"))) == 6
    assert not (tmp_path / "~").exists()
    status = runner.invoke(app, ["status", "~/styled"], terminal_width=200)
    assert status.exit_code == 0 and cell(status.output, "done") == "6", status.output


def test_invalid_rows_are_listed_and_skip_bad_rows_runs_the_rest(dataset, tmp_path):
    bad = dataset.parent / "content" / "c1.png"
    bad.write_bytes(b"not a png")
    out = tmp_path / "out"
    refused = run_cli(dataset, out)
    assert refused.exit_code == 2
    assert "row 2:" in refused.output and "c1.png: cannot decode" in refused.output
    assert not list(out.glob("*.png"))
    result = run_cli(dataset, out, "--skip-bad-rows", "--workers", "2")
    assert result.exit_code == 1, result.output
    assert len(list(out.glob("*.png"))) == 4
    status = runner.invoke(app, ["status", str(out)], terminal_width=200)
    assert "cannot decode" in status.output
    # --json: the same numbers for scripts, alone on stdout (warnings go to stderr)
    got = json.loads(runner.invoke(app, ["status", str(out), "--json"]).stdout)
    assert [got[k] for k in ("jobs", "done", "failed", "pending")] == [
        int(cell(status.output, k)) for k in ("jobs", "done", "failed", "pending")] == [6, 4, 2, 0]
    assert [f["row"] for f in got["failures"]] == [2, 3] and all(
        "c1.png: cannot decode" in f["error"] for f in got["failures"])
    assert got["throughput"]["devices"] == ["cpu"] and got["throughput"]["outputs_per_hour"] > 0
    assert got["report"] == str(out / "report.html") and got["resume_from_checkpoint"] == 0


def test_a_quiet_run_says_its_skipped_rows_and_failures_and_nothing_else(dataset, tmp_path):
    """-q for scripts and cron: no bars, table or lines that only inform (a worker's provider),
    but each row left out, each job that failed and, on a rerun, why the exit code is 1."""
    content = dataset.parent / "content"
    (content / "c1.png").write_bytes(b"not a png")  # rows 2 and 3: invalid, left out
    whole = (content / "c2.png").read_bytes()
    (content / "c2.png").write_bytes(whole[:len(whole) // 2])  # rows 4, 5: fail as they decode
    out = tmp_path / "out"
    first = run_cli(dataset, out, "--skip-bad-rows", "-q")
    assert first.exit_code == 1, first.output
    lines = first.output.splitlines()
    assert [line.split(":")[0] for line in lines] == [
        "WARNING  skipped row 2", "WARNING  skipped row 3", "failed row 4", "failed row 5"], lines
    assert "c1.png: cannot decode" in lines[0] and "c2.png: cannot decode" in lines[2]
    assert len(list(out.glob("*.png"))) == 2 and (out / "report.html").is_file()
    again = run_cli(dataset, out, "--skip-bad-rows", "-q")
    assert again.exit_code == 1, again.output
    assert again.output.splitlines()[2:] == [
        "failed 2 jobs in an earlier run (pipeline status lists why; --retry-failed reruns "
        "them)"], again.output
    told = run_cli(dataset, out, "--skip-bad-rows")  # the same, said in full
    assert told.exit_code == 1, told.output
    assert cell(told.output, "failed") == "4 (2 from earlier runs; --retry-failed reruns them)"


def test_a_quiet_display_says_warnings_failures_and_lost_workers_only():
    from pipeline.bulk.events import BatchStarted, JobsDone, Log, Lost, Ready
    from pipeline.cli.progress import RunDisplay, console

    with console.capture() as captured, RunDisplay(4, ["cpu", "cpu"], quiet=True) as display:
        for event in (Ready(0, "cpu", "fp32", "auto"), BatchStarted(0, 2, 40, 25),
                      Log(0, "targets: ONNX Runtime provider CPUExecutionProvider"),
                      Log(1, "cannot keep the passes of a.mp4", warning=True),
                      JobsDone(0, 1, [(3, "a.png: cannot decode image")]), Lost(1, "killed")):
            display.handle(event)
        display.worker_restarted(1)
        display.interrupted()
    assert captured.get().splitlines() == [
        "w1: cannot keep the passes of a.mp4", "failed row 3: a.png: cannot decode image",
        "worker 1 died (killed)",
        "w1: a new worker starts in its place; its batch goes to the next worker free",
        "stopping: each worker saves a checkpoint of its batch... (Ctrl-C again to quit now)"]


def test_a_job_whose_image_breaks_after_validation_fails_alone(dataset, tmp_path):

    from pipeline.accel.runtime import Runtime
    from pipeline.bulk.worker import Worker

    out = tmp_path / "out"
    inspect = Inspector()
    jobs = [inspect(j) for j in read_jobs(dataset, out, {"size": 32, "iterations": 3})]
    by_content = {j.spec.content: j for j in jobs if j.size == jobs[0].size}
    same_size = list(by_content.values())[:2]  # same output size, different content files
    same_size[1].spec.content.write_bytes(b"broken")  # breaks after inspection
    worker = Worker(0, Runtime.create("cpu", "fp32", channels_last=False), out, 0, [].append)
    worker.run(Batch(tuple(same_size)))
    rows = ledger.read(out)
    assert rows[same_size[0].id]["status"] == "done"
    assert rows[same_size[1].id]["status"] == "failed"
    assert "cannot decode" in rows[same_size[1].id]["error"]


@pytest.mark.parametrize(("cell", "message"), [
    ({"content": "nope.png"}, "no such image file"),
    ({"size": "abc"}, "size: not a number: 'abc'"),
    ({"size": "5"}, "size must be between"),
    ({"tv_weight": "nan"}, "tv_weight must be a finite"),
    ({"optimizer": "sgd"}, "optimizer must be one of"),
    ({"output": "x.gif"}, "must end in .png"),
    ({"output": "sub/.png"}, "output 'sub/.png' has no name before its extension"),
    ({"output": "same.png"}, "duplicates row"),
    ({"style_weights": "1,2"}, "style_weights has 2 values but needs 1"),
    ({"style": ""}, "style must be a path"),
    ({"content": "content"}, "is a folder, not an image file"),
    ({"output": "../escape.png"}, "outside the --out folder"),
    ({"output": "sub/../../escape.png"}, "outside the --out folder"),
    ({"output": "/tmp/absolute.png"}, "outside the --out folder"),
    ({"output": "ledger/x.png"}, "the run's own"),
    ({"iterations": "1000000000"}, "iterations must be between 0 and 100000"),
    ({"init": "content/missing.png"}, "missing.png: no such image file"),
    ({"weights": "vgg.safetensors"}, "weights file"),
])
def test_validation_catches_each_kind_of_bad_row(dataset, tmp_path, cell, message):
    rows = pq.read_table(dataset).to_pylist()
    rows = [{**r, "size": "32", "tv_weight": "0.001", "optimizer": "lbfgs", "output": None,
             "style_weights": None, "iterations": None, "init": None, "weights": None}
            for r in rows]
    for r in rows[2:4]:
        r.update(cell)
    manifest = write_manifest(rows, dataset.parent / "bad.parquet")
    result = runner.invoke(app, ["manifest", "validate", str(manifest), "--out",
                                 str(tmp_path / "o")], terminal_width=300)
    assert result.exit_code == 2, result.output
    assert message in result.output and "row 3" in result.output


def test_unknown_and_missing_columns(dataset, tmp_path):
    rows = pq.read_table(dataset).to_pylist()
    bad = write_manifest([{**r, "colour": 1} for r in rows], tmp_path / "u.parquet")
    result = runner.invoke(app, ["manifest", "validate", str(bad)], terminal_width=300)
    assert result.exit_code == 2 and "unknown column(s) ['colour'] (did you mean 'color'?)" in (
        result.output)
    typo = run_cli(dataset, tmp_path / "o", "--set", "style_wieght=10")
    assert typo.exit_code == 2
    assert "--set 'style_wieght=10' (did you mean 'style_weight'?)" in typo.output
    bare = run_cli(dataset, tmp_path / "o", "--set", "style_weight")  # the name right, no value
    assert bare.exit_code == 2
    assert "error: --set 'style_weight': no value; give style_weight=value" in bare.output
    # a value out of its range: said once for the --set, not once per row it fills; nothing
    # written (the folder is not made)
    for item, said in (("size=100000", "size must be between 16 and 16384, got 100000"),
                       ("tol=nan", "tol must be a finite number, got nan"),
                       ("optimizer=sgd", "optimizer must be one of lbfgs, adam, got 'sgd'")):
        for command in (["run", str(dataset), "--out", str(tmp_path / "o")],
                        ["manifest", "validate", str(dataset)]):
            result = runner.invoke(app, [*command, "--set", item], terminal_width=300)
            assert result.exit_code == 2, result.output
            assert result.output.splitlines() == [f"error: --set {item!r}: {said}"]
    assert not (tmp_path / "o").exists()
    bad = write_manifest([{"content": r["content"]} for r in rows], tmp_path / "m.parquet")
    result = runner.invoke(app, ["manifest", "validate", str(bad)], terminal_width=300)
    assert result.exit_code == 2 and "missing required column(s) ['style']" in result.output


def test_second_run_on_the_same_folder_is_refused(dataset, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    with folder_lock(out):  # the lock is the folder's own: no file to delete to defeat it
        result = run_cli(dataset, out)
    assert result.exit_code == 4 and "another `pipeline run` is using" in result.output


def _some_done_and_one_in_progress(out) -> bool:
    """A job is done and a checkpoint holds one that is not, at most two thirds of the way: a
    batch mid-way, not one whose checkpoint is about to be deleted (the workers run in step,
    so both can be finishing, and a job near its end could finish before the stop lands)."""
    done = {key for (key, _), r in ledger.read(out).items() if r["status"] == "done"}
    for path in saved_checkpoints(out) if done else []:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            keys, iteration = state["keys"], int(state["iteration"])
        except (OSError, RuntimeError, KeyError):  # replaced or deleted while read
            continue
        if not set(keys) <= done and iteration <= 2 * KILLED_RUN_ITERATIONS // 3:
            return True
    return False


# Checkpoints every 2 iterations, one job a batch: long enough for a stop to find a batch
# mid-way after another has finished.
KILLED_RUN_ITERATIONS = 30


@pytest.fixture(scope="session")
def uninterrupted(tmp_path_factory):
    """A dataset and its uninterrupted run, shared by the three ways of stopping one (session:
    a test process running other files' tests between them keeps it)."""
    root = tmp_path_factory.mktemp("uninterrupted")
    dataset = make_dataset(root)
    # and a content of one job, whose targets a resume computes again (not cached: scan.py)
    make_photo((48, 48), seed=9).save(dataset.parent / "content" / "alone.png")
    rows = pq.read_table(dataset).to_pylist()
    write_manifest([*rows, {**rows[0], "content": "content/alone.png"}], dataset)
    proc = spawn_run(dataset, root / "ref", KILLED_RUN_ITERATIONS)
    assert proc.wait(timeout=600) == 0, proc.stdout.read()
    return dataset, root / "ref"


@pytest.mark.parametrize("how", ["sigkill", "ctrl-c", "sigterm"])
def test_killed_run_resumes_and_matches_an_uninterrupted_one(uninterrupted, tmp_path, how):
    dataset, reference = uninterrupted
    out = tmp_path / "out"
    proc = spawn_run(dataset, out, KILLED_RUN_ITERATIONS)
    wait_for(lambda: _some_done_and_one_in_progress(out))
    # `status` meanwhile: the run's process (from the lock it holds), and when it will end
    going = json.loads(runner.invoke(app, ["status", str(out), "--json"]).stdout)
    assert (going["running"], going["process"]["pid"]) == (True, proc.pid), going
    assert going["pending"] > 0 and going["eta_seconds"] > 0, going
    assert going["resume_command"] is None  # nothing to resume while it runs
    hint = None
    if how == "sigkill":  # the whole run, workers included, as a crash or reboot would
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    else:  # Ctrl-C, or what `kill`, a scheduler or a container runtime sends
        signum = signal.SIGINT if how == "ctrl-c" else signal.SIGTERM
        proc.send_signal(signum)
        text = proc.communicate(timeout=300)[0]
        assert proc.returncode == 128 + signum, text
        # one line to copy, with the --set items and options the run was given: the rerun
        # below runs it, and gets the bytes of the uninterrupted run
        hint = shlex.split(re.search(r"resume with: (.*)\n", text).group(1))
        assert hint[:5] == ["pipeline", "run", str(dataset), "--out", str(out)], hint
    stopped = runner.invoke(app, ["status", str(out)], terminal_width=200)
    assert cell(stopped.output, "run") == "not running"
    with pytest.raises(AssertionError, match="'eta' not in"):
        cell(stopped.output, "eta")
    # after a crash no run said how to resume: status does, as the run would have (the rerun
    # below after kill -9 runs status's command)
    said = json.loads(runner.invoke(app, ["status", str(out), "--json"]).stdout)
    from pipeline import run_status  # the same from Python
    assert json.loads(json.dumps(run_status(str(out)).as_dict())) == said
    again = shlex.split(said["resume_command"])
    assert again == (hint or again), (hint, again)
    assert f"\nresume with: {said['resume_command']}\n" in stopped.output  # on one line
    head, options, sets = again[:5], again[5:-4], again[-4:]
    assert head == ["pipeline", "run", str(dataset), "--out", str(out)], again
    assert sets == ["--set", "size=32", "--set", f"iterations={KILLED_RUN_ITERATIONS}"], again
    given = ["--devices", "cpu", "--checkpoint-every", "2", "--checkpoint-budget", "1",
             *ONE_BY_ONE]  # spawn_run's, in another order

    def pairs(words):
        return dict(zip(words[::2], words[1::2], strict=True))

    assert pairs(options) == pairs(given), again
    done_before = {k: r["finished_at"] for k, r in ledger.read(out).items()
                   if r["status"] == "done"}
    assert 0 < len(done_before) < 7
    assert saved_checkpoints(out)

    proc = subprocess.Popen([sys.executable, "-m", *again], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True, text=True)
    text = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, text
    assert _resumed(text, out), text
    after = ledger.read(out)
    assert all(after[k]["finished_at"] == t for k, t in done_before.items())  # not redone
    assert not list((out / ".checkpoints").glob("*.pt"))  # temp files included
    ref_images, images = images_in(reference), images_in(out)
    assert ref_images.keys() == images.keys() and len(images) == 7
    for name, img in images.items():  # same machine and configuration: the same bytes
        assert torch.equal(img, ref_images[name]), name
    # Every job's loss trace has each point once (the resumed batch's from its checkpoint),
    # and the same values as the uninterrupted run's.
    ref_traces, found = traces.read(reference), traces.read(out)
    assert found.keys() == ref_traces.keys() and len(found) == 7
    used = {r["key"]: r["iterations"] for r in after.values()}
    for key, points in found.items():
        assert [p["iteration"] for p in points] == [*range(0, used[key], 10), used[key]]
        assert points == ref_traces[key]


def _resumed(text, out):
    """The (row, iteration) each resumed job said, checked against its ledger row."""
    resumed = [(int(row), int(it)) for row, it in
               re.findall(r"row (\d+): resuming from its checkpoint at iteration (\d+)/", text)]
    by_row = {r["row"]: r for r in ledger.read(out).values()}
    assert all(by_row[row]["resumed_from"] == it > 0 for row, it in resumed), resumed
    return resumed


# Runs a `pipeline` command in a fresh interpreter, then says which heavy modules it loaded.
LOADED = """
import sys
from pipeline.cli import main
try:
    main(sys.argv[1:])
except SystemExit as e:
    code = e.code
print("loaded", sorted(m for m in ("torch", "onnx", "onnxruntime") if m in sys.modules), code)
"""


def test_commands_that_compute_nothing_start_without_torch(uninterrupted, tmp_path):
    """`--help`, `--version`, `status`, `report`, `manifest build` and `manifest validate`
    load neither torch nor ONNX Runtime (most of a start-up, and of the memory), so that a
    script can poll a run, or check a manifest, cheaply."""
    dataset, reference = uninterrupted
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    data = dataset.parent
    for args in (["--help"], ["--version"], ["run", "--help"], ["status", str(out)],
                 ["status", str(out), "--json"], ["report", str(out)],
                 ["manifest", "build", "--content", str(data / "content"), "--style",
                  str(data / "style"), "-o", str(tmp_path / "m.parquet")],
                 ["manifest", "validate", str(dataset)]):
        proc = subprocess.run([sys.executable, "-c", LOADED, *args], cwd=ROOT,
                              capture_output=True, text=True, timeout=300)
        assert proc.stdout.splitlines()[-1] == "loaded [] 0", (args, proc.stdout, proc.stderr)
    assert (out / "report.html").is_file() and (tmp_path / "m.parquet").is_file()


# `pipeline run` in a fresh interpreter, saying when its fork server started and which it used.
EARLY = """
import sys
from multiprocessing import forkserver
import pipeline.cli.run as command
from pipeline.cli import main
started = command.start_early
def spy():
    started()
    print("early", "torch" in sys.modules, forkserver._forkserver._forkserver_pid, flush=True)
command.start_early = spy
try:
    main(sys.argv[1:])
except SystemExit as e:
    print("after", forkserver._forkserver._forkserver_pid, e.code)
"""


def test_the_workers_fork_server_starts_before_the_driver_imports_torch(dataset, tmp_path):
    """Its imports then run beside the driver's (and its manifest check) instead of after
    them; the run's workers fork from that server, not from a second one."""
    proc = subprocess.run([sys.executable, "-c", EARLY, "run", str(dataset), "--out",
                           str(tmp_path / "out"), *FAST, "--no-report"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    lines = [line.split() for line in proc.stdout.splitlines()
             if line.startswith(("early", "after"))]
    assert [line[0] for line in lines] == ["early", "after"], (proc.stdout, proc.stderr)
    (_, torch_loaded, server), (_, used, code) = lines
    assert torch_loaded == "False" and server == used != "None" and code == "0", lines


def test_status_names_a_run_that_is_still_checking_its_manifest(uninterrupted, tmp_path):
    """A run holds the folder's lock from its start but writes run.json once its manifest is
    checked: meanwhile run.json is the last run's, and status gives no eta from it."""
    from pipeline.bulk.locks import folder_lock

    _, reference = uninterrupted
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    with folder_lock(out):
        status = runner.invoke(app, ["status", str(out)], terminal_width=200)
    assert cell(status.output, "run") == f"running: process {os.getpid()}, checking its manifest"
    with pytest.raises(AssertionError, match="'eta' not in"):
        cell(status.output, "eta")
    assert cell(runner.invoke(app, ["status", str(out)], terminal_width=200).output,
                "run") == "not running"


def test_status_cannot_tell_that_no_run_holds_a_folder_other_machines_mount(
        uninterrupted, tmp_path, monkeypatch):
    """On NFS a run on another machine holds a lock this machine's table does not list: status
    then says nothing of it (JSON: running null), but still sees a run on this machine."""
    from pipeline.bulk import locks
    from pipeline.bulk.locks import folder_lock

    _, reference = uninterrupted
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    mounts = tmp_path / "mounts"
    mounts.write_text(f"/dev/vda / ext4 rw 0 0\nserver:/export {tmp_path.resolve()} nfs4 rw 0 0\n")
    monkeypatch.setattr(locks, "PROC_MOUNTS", mounts)
    status = runner.invoke(app, ["status", str(out)], terminal_width=200)
    assert status.exit_code == 0, status.output
    with pytest.raises(AssertionError, match="'run' not in"):
        cell(status.output, "run")
    assert json.loads(runner.invoke(app, ["status", str(out), "--json"]).stdout)["running"] is None
    with folder_lock(out):
        status = runner.invoke(app, ["status", str(out)], terminal_width=200)
    assert cell(status.output, "run").startswith(f"running: process {os.getpid()}")


def test_killed_at_batch_4_jobs_resume_from_their_checkpoints_at_batch_3(tmp_path):
    """Each job is checkpointed on its own: a run killed at batch size 4 resumes at batch
    size 3 (other rows, another split over the cores), every job from its own checkpoint, to
    the images of an uninterrupted run (fp64, as the other batching equivalences)."""
    dataset = make_dataset(tmp_path)
    fp64 = ("--workers", "1", "--precision", "fp64")
    reference = spawn_run(dataset, tmp_path / "ref", 30, (*fp64, "--batch-size", "4"))
    assert reference.wait(timeout=600) == 0, reference.stdout.read()
    out = tmp_path / "out"
    proc = spawn_run(dataset, out, 30, (*fp64, "--batch-size", "4"))
    wait_for(lambda: len(saved_checkpoints(out)) >= 3)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    proc = spawn_run(dataset, out, 30, (*fp64, "--batch-size", "3"))
    text = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, text
    assert text.splitlines()[0].strip(), text  # into a pipe: no blank line from the row counter
    assert len(_resumed(text, out)) >= 3, text
    ref_images, images = images_in(tmp_path / "ref"), images_in(out)
    assert ref_images.keys() == images.keys() and len(images) == 6
    for name, img in images.items():
        assert torch.equal(img, ref_images[name]), name


def _stopper(iteration: int, seen: list, stopped: list) -> type:
    """A run display that keeps what the workers say, and presses Ctrl-C once a batch reaches
    `iteration` while `stopped` is empty."""
    from pipeline.cli.progress import RunDisplay

    class Stopper(RunDisplay):
        def handle(self, event):
            super().handle(event)
            seen.append(event)
            if isinstance(event, Iteration) and event.iteration >= iteration and not stopped:
                stopped.append(True)
                os.kill(os.getpid(), signal.SIGINT)

    return Stopper


def test_a_fixed_batch_resumes_whole_at_another_batch_size_with_a_job_written_before(
        dataset, tmp_path):
    """Adam steps a batch's jobs together, so they checkpoint and resume together. Stopped,
    then one of its outputs written (as a kill between two of its writes leaves it), the batch
    resumes at batch size 6 as the batch of 4 it was, the written job run with it but not
    written again, to the images of an uninterrupted run (fp64)."""
    import shutil

    from pipeline.accel.runtime import RuntimeOptions
    from pipeline.bulk.checkpoint_files import batch_checkpoints
    from pipeline.bulk.events import BatchStarted, Log
    from pipeline.bulk.manifest import parse_overrides
    from pipeline.bulk.runner import RunOptions, run_manifest

    def options(out, batch):
        return RunOptions(out, devices="cpu", workers=1, batch_size=batch, checkpoint_every=5,
                          checkpoint_budget=1,
                          overrides=parse_overrides(["size=32", "iterations=60", "optimizer=adam"]),
                          runtime=RuntimeOptions(precision="fp64"))

    seen, stopped = [], [True]  # not the reference
    Stopper = _stopper(20, seen, stopped)  # a quarter of the way
    assert not run_manifest(dataset, options(tmp_path / "ref", 4), Stopper).failed
    stopped.clear()
    out = tmp_path / "out"
    assert run_manifest(dataset, options(out, 4), Stopper).interrupted
    [(keys, iteration)] = batch_checkpoints(out)
    assert len(keys) == 4 and 20 <= iteration < 60, iteration
    by_key = {r["key"]: r for r in ledger.read(tmp_path / "ref").values()}
    written = by_key[keys[1]]["output"]
    shutil.copy2(tmp_path / "ref" / written, out / written)
    before = (out / written).stat().st_mtime_ns
    status = runner.invoke(app, ["status", str(out)], terminal_width=200)
    assert cell(status.output, "pending") == (
        f"5 (3 resume from a checkpoint, at iteration {iteration})"), status.output
    got = json.loads(runner.invoke(app, ["status", str(out), "--json"]).stdout)
    assert (got["pending"], got["resume_from_checkpoint"]) == (5, 3)
    said = f"{got['resume_command']} "  # a run from Python: its options as typed
    for words in ("--devices cpu", "--workers 1", "--batch-size 4", "--checkpoint-every 5",
                  "--checkpoint-budget 1", "--precision fp64", "--set optimizer=adam"):
        assert f" {words} " in said, said

    seen.clear()
    result = run_manifest(dataset, options(out, 6), Stopper)
    assert not result.failed and result.done == 5 and result.done_before == 1
    assert any(isinstance(e, BatchStarted) and (e.jobs, e.resumed_at) == (4, iteration)
               for e in seen)
    assert any(isinstance(e, Log) and "written before" in e.message for e in seen)
    rows = {r["key"]: r for r in ledger.read(out).values()}
    assert [rows[k]["resumed_from"] for k in keys if k != keys[1]] == [iteration] * 3
    assert (out / written).stat().st_mtime_ns == before
    assert rows[keys[1]]["error"] == "recovered from output file"  # its one row
    assert not saved_checkpoints(out)
    ref_images, images = images_in(tmp_path / "ref"), images_in(out)
    assert ref_images.keys() == images.keys() and len(images) == 6
    for name, img in images.items():
        assert torch.equal(img, ref_images[name]), name


@pytest.mark.parametrize("first", ["fixed", "slots"])
def test_a_run_stopped_resumes_its_checkpoints_with_continuous_batching_switched(
        first, dataset, tmp_path):
    """Stopped with --no-continuous, rerun without it (as `status` and a hint from before
    said): the jobs have no checkpoints of their own, so their batch resumes whole from its
    checkpoint. Stopped in slots, rerun with --no-continuous: each job resumes from its own
    checkpoint (a fixed batch cannot hold jobs at different iterations). Neither starts from
    iteration 0, and both give the images of an uninterrupted run (fp64)."""
    from pipeline.accel.runtime import RuntimeOptions
    from pipeline.bulk.checkpoint_files import batch_checkpoints, job_checkpoints
    from pipeline.bulk.manifest import parse_overrides
    from pipeline.bulk.runner import RunOptions, run_manifest

    def options(out, continuous):
        return RunOptions(out, devices="cpu", workers=1, batch_size=6, checkpoint_every=5,
                          checkpoint_budget=1, continuous=continuous,
                          overrides=parse_overrides(["size=32", "iterations=40", "tol=0"]),
                          runtime=RuntimeOptions(precision="fp64"))

    seen, stopped = [], [True]  # not the reference
    Stopper = _stopper(15, seen, stopped)
    continuous = first == "slots"
    assert not run_manifest(dataset, options(tmp_path / "ref", continuous), Stopper).failed
    stopped.clear()
    out = tmp_path / "out"
    assert run_manifest(dataset, options(out, continuous), Stopper).interrupted
    if continuous:
        assert not batch_checkpoints(out)
        resumed = job_checkpoints(out)
    else:
        assert not job_checkpoints(out)
        resumed = {key: iteration for keys, iteration in batch_checkpoints(out) for key in keys}
    assert resumed and all(0 < i < 40 for i in resumed.values()), resumed
    result = run_manifest(dataset, options(out, not continuous), Stopper)
    assert not result.failed and result.done + result.done_before == 6
    rows = {r["key"]: r for r in ledger.read(out).values()}
    assert {key: rows[key]["resumed_from"] for key in resumed} == resumed
    ref_images, images = images_in(tmp_path / "ref"), images_in(out)
    assert ref_images.keys() == images.keys() and len(images) == 6
    for name, img in images.items():
        assert torch.equal(img, ref_images[name]), name


def test_ctrl_c_with_hundreds_of_batches_queued_exits_at_once(dataset, tmp_path):
    """More queued batches than a pipe holds: a stopped run must not wait to hand them over."""
    rows = pq.read_table(dataset).to_pylist()
    manifest = write_manifest([{**r, "output": f"o/{i}_{j}.png"} for i in range(100)
                               for j, r in enumerate(rows)], dataset.parent / "long.parquet")
    out = tmp_path / "out"
    proc = spawn_run(manifest, out, 60)
    try:
        wait_for(lambda: saved_checkpoints(out))
        proc.send_signal(signal.SIGINT)
        text = proc.communicate(timeout=120)[0]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, text
    assert int(cell(text, "done now")) + int(cell(text, "pending")) == 600


def test_a_second_ctrl_c_quits_at_once_and_the_run_resumes(dataset, tmp_path):
    from pipeline.accel.runtime import RuntimeOptions
    from pipeline.bulk.manifest import parse_overrides
    from pipeline.bulk.runner import RunOptions, run_manifest
    from pipeline.cli.progress import RunDisplay

    pressed = []

    class Impatient(RunDisplay):
        """Presses Ctrl-C at the first iteration, and again as soon as the run says it is
        stopping (before any worker can have saved its stop checkpoint and left)."""

        def handle(self, event):
            super().handle(event)
            if isinstance(event, Iteration) and not pressed:
                pressed.append("stop")
                os.kill(os.getpid(), signal.SIGINT)

        def interrupted(self):
            super().interrupted()
            pressed.append("again")
            os.kill(os.getpid(), signal.SIGINT)

        def aborted(self):
            super().aborted()
            pressed.append("quit")

    handler = signal.getsignal(signal.SIGINT)
    opts = RunOptions(tmp_path / "out", devices="cpu", workers=2, batch_size=1,
                      checkpoint_every=2, checkpoint_budget=1,
                      overrides=parse_overrides(["size=32", "iterations=10"]),
                      runtime=RuntimeOptions(precision="fp32"))
    result = run_manifest(dataset, opts, Impatient)
    assert pressed == ["stop", "again", "quit"]
    assert result.interrupted and result.pending > 0
    assert signal.getsignal(signal.SIGINT) is handler  # Ctrl-C is the caller's again
    result = run_manifest(dataset, opts, RunDisplay)
    assert not result.interrupted and not result.failed
    assert result.done_before + result.done == 6


def test_failed_jobs_are_skipped_until_retry_failed(dataset, tmp_path):
    """A failure that does not change the job (its content image is cut short past its header,
    which `pipeline run` reads alone) stays failed across runs until --retry-failed."""
    broken = dataset.parent / "content" / "c0.png"  # rows 0 and 1
    broken.write_bytes(broken.read_bytes()[:len(broken.read_bytes()) * 2 // 3])
    out = tmp_path / "out"
    first = run_cli(dataset, out, "--workers", "2")
    assert first.exit_code == 1, first.output
    assert cell(first.output, "done now") == "4"
    failed = [r for r in ledger.read(out).values() if r["status"] == "failed"]
    assert len(failed) == 2 and all("cannot decode" in r["error"] for r in failed)
    skipped = run_cli(dataset, out)
    assert skipped.exit_code == 1 and cell(skipped.output, "done now") == "0"
    assert "from earlier runs" in skipped.output
    retried = run_cli(dataset, out, "--retry-failed")
    assert retried.exit_code == 1, retried.output
    assert cell(retried.output, "failed") == "2"  # tried again now, not skipped
    assert "from earlier runs" not in retried.output


def test_a_run_whose_output_is_no_terminal_says_its_progress_in_plain_lines(
        dataset, tmp_path, monkeypatch):
    """In a log file or CI (CliRunner's output is no terminal) no bars are drawn: the jobs'
    progress is a line (here at every iteration and every end: LOG_EVERY at 0), failures
    counted, the workers' iterations beside it, the last one at the end."""
    from pipeline.cli import progress

    broken = dataset.parent / "content" / "c0.png"  # rows 0 and 1 fail
    broken.write_bytes(broken.read_bytes()[:len(broken.read_bytes()) * 2 // 3])
    monkeypatch.setattr(progress, "LOG_EVERY", 0.0)
    result = run_cli(dataset, tmp_path / "out")
    assert result.exit_code == 1, result.output
    assert "━" not in result.output
    said = [re.fullmatch(r"jobs (\d)/6 done(?:, (\d) failed)?(, [^;]*)?((?:; w0 \d+/\d+)?)",
                         line) for line in result.output.splitlines() if line.startswith("jobs ")]
    assert all(m is not None for m in said), result.output
    ended = [(int(m[1]), int(m[2] or 0)) for m in said]
    assert ended[-1] == (4, 2) and ended == sorted(ended), result.output
    assert any(m[4] for m in said), result.output  # a worker's iterations while it runs
    assert re.search(r"\d images/hour, eta 0:00:00$", said[-1][3]), said[-1][3]


def test_status_line_counts_rates_and_eta():
    from pipeline.cli.progress import status_line

    assert status_line(3, 1, 10, 40.0, False) == "3/10 done, 1 failed, 270 images/hour, eta 0:01:00"
    assert status_line(0, 2, 10, 5.0, True) == "0/10 done, 2 failed, eta 0:00:20"
    assert status_line(2, 0, 2, 7200.0, True) == "2/2 done, 1 outputs/hour, eta 0:00:00"
    assert status_line(0, 0, 5, 0.0, False) == "0/5 done"


def test_durations_read_as_seconds_then_hours():
    from pipeline.cli.progress import duration

    assert [duration(s) for s in (0.04, 13.44, 59.94, 59.96, 252.7, 36123.4)] == [
        "0.0 s", "13.4 s", "59.9 s", "0:01:00", "0:04:13", "10:02:03"]
    assert duration(46.4, 0) == "46 s" and duration(59.6, 0) == "0:01:00"


def test_a_run_lists_its_first_failures_and_counts_the_rest(monkeypatch):
    """A broken style in a run of thousands fails thousands of jobs: the first LISTED are
    listed as they end, then one line says the rest are only counted."""
    import io

    from rich.console import Console

    from pipeline.bulk.events import JobsDone
    from pipeline.cli import progress
    from pipeline.cli.progress import LISTED, RunDisplay

    printed = io.StringIO()
    monkeypatch.setattr(progress, "console", Console(file=printed, width=200))
    display = RunDisplay(total=3 * LISTED, devices=["cpu"])
    with display:
        for first in range(0, 3 * LISTED, 50):  # jobs end 50 at a time, 10 of them done
            display.handle(JobsDone(0, 10, [(row, "s.png: cannot decode image")
                                             for row in range(first + 10, first + 50)]))
    lines = printed.getvalue().splitlines()
    failed = [line for line in lines if line.startswith("failed ")]
    rows = [row for first in range(0, 3 * LISTED, 50) for row in range(first + 10, first + 50)]
    assert failed[:LISTED] == [f"failed row {r}: s.png: cannot decode image"
                               for r in rows[:LISTED]]
    assert len(failed) == LISTED + 1 and "pipeline status lists them all" in failed[-1]
    assert display.failed == len(rows) == 240
    assert lines[-1].startswith(f"jobs 60/{3 * LISTED} done, 240 failed")


def test_out_of_memory_retries_once_at_half_the_batch(dataset, tmp_path, monkeypatch):

    import torch

    import pipeline.bulk.worker as worker_module
    from pipeline.accel.runtime import Runtime

    real = worker_module.stylize_prepared
    sizes = []

    def fake(prepared, *args, **kwargs):
        sizes.append(len(prepared))
        if len(prepared) > 1:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(prepared, *args, **kwargs)

    monkeypatch.setattr(worker_module, "stylize_prepared", fake)
    out = tmp_path / "out"
    inspect = Inspector()
    jobs = [inspect(j) for j in read_jobs(dataset, out, {"size": 32, "iterations": 2})]
    pair = [j for j in jobs if j.size == jobs[0].size][:2]
    worker = worker_module.Worker(0, Runtime.create("cpu", "fp32", channels_last=False), out, 0,
                                  [].append)
    worker.run(Batch(tuple(pair)))
    assert sizes == [2, 1, 1]
    assert all(r["status"] == "done" for r in ledger.read(out).values())

    def always_oom(prepared, *args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(worker_module, "stylize_prepared", always_oom)
    out2 = tmp_path / "out2"
    worker.out_dir = out2
    worker.run(Batch(tuple(pair)))
    rows = ledger.read(out2)
    assert all(r["status"] == "failed" and "out of memory" in r["error"] for r in rows.values())


def test_large_manifest_is_read_in_batches(dataset, tmp_path):
    from pipeline.bulk.scan import scan

    base = pq.read_table(dataset).to_pylist()[0]
    rows = [{**base, "output": f"o{i}.png", "seed": i} for i in range(10_000)]
    manifest = write_manifest(rows, dataset.parent / "big.parquet")
    seen = []
    found = scan(manifest, tmp_path / "out", {}, seen.append, decode=False)
    assert not found.errors and len(found.jobs) == 10_000 and sum(seen) == 10_000
    assert len({j.key for j in found.jobs}) == 10_000  # the seed is part of each key


def test_size_bucket_lets_nearly_equal_shapes_share_a_batch(tmp_path):
    from pipeline.bulk.queue import BatchQueue
    from pipeline.bulk.scan import scan

    images = tmp_path / "data"
    images.mkdir()
    for i, size in enumerate([(90, 60), (91, 60)]):  # 64x43 and 64x42 at size 64
        make_photo(size, seed=i).save(images / f"c{i}.png")
    make_painting(seed=10).save(images / "s.png")
    rows = build_rows(sorted(images.glob("c*.png")), [images / "s.png"], {})
    manifest = write_manifest(rows, images / "manifest.parquet")

    def batches(bucket: int) -> list[Batch]:
        found = scan(manifest, tmp_path / "scan", {"size": 64, "size_bucket": bucket},
                     decode=False)
        queue = BatchQueue(found.jobs)
        return list(iter(lambda: queue.take(lambda job: 4), None))

    assert [[j.size for j in b.jobs] for b in batches(0)] == [[(64, 43)], [(64, 42)]]
    assert [[j.size for j in b.jobs] for b in batches(8)] == [[(64, 40), (64, 40)]]
    out = tmp_path / "out"
    result = run_cli(manifest, out, "--set", "size=64", "--set", "size_bucket=8")
    assert result.exit_code == 0, result.output
    assert [Image.open(p).size for p in sorted(out.glob("*.png"))] == [(64, 40), (64, 40)]
    started = {r["started_at"] for r in ledger.read(out).values()}
    assert len(started) == 1  # one batch


def test_default_batch_size_batches_only_measured_sizes():
    assert default_batch_size("cpu", (256, 192)) == 4
    assert default_batch_size("cpu", (512, 384)) == 4
    assert default_batch_size("cpu", (724, 543)) == 2
    assert default_batch_size("cpu", (1024, 768)) == 1
    assert default_batch_size("cpu", (4000, 3000)) == 1
    assert default_batch_size("cuda:1", (512, 384)) == 8
    assert default_batch_size("cuda:1", (1024, 768)) == 1
    # two CPU workers: at most 4 images each, and 4 x 512x384 px in flight between them
    assert default_batch_size("cpu", (128, 96), cpu_workers=2) == 4
    assert default_batch_size("cpu", (256, 192), cpu_workers=2) == 4
    assert default_batch_size("cpu", (512, 384), cpu_workers=2) == 2
    assert default_batch_size("cpu", (724, 543), cpu_workers=2) == 1


def test_two_cpu_workers_only_where_two_of_the_largest_jobs_fit_the_pixel_budget():
    small = [(256, 192), (512, 384)]
    assert auto_cpu_workers(small, cores=2) == 2
    assert auto_cpu_workers(small, cores=1) == 1
    assert auto_cpu_workers([*small, (1024, 768)], cores=16) == 1


def test_cpu_workers_are_at_most_one_per_core_and_a_larger_number_is_said(monkeypatch, caplog):
    """`--workers 100` on 2 cores ran 100 processes, each holding a model, on one thread
    each: now 2, with a warning; a GPU device list is not the CPU's."""
    from pipeline.bulk.distributors import local_slots

    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    slots = local_slots("cpu", 100, [(64, 64)])
    assert [(s.device, s.threads) for s in slots] == [("cpu", 1), ("cpu", 1)]
    assert ("--workers 100: this machine has 2 cores; running one CPU worker per core"
            in caplog.text)
    caplog.clear()
    assert len(local_slots("cpu", 2, [(64, 64)])) == 2 and not caplog.text


def test_a_worker_forwards_the_provider_and_warnings_not_per_image_lines():
    import logging

    from pipeline.bulk.events import Log
    from pipeline.bulk.worker import ForwardLog

    sent: list = []
    logger = logging.getLogger("pipeline.test-forward")
    logger.addHandler(handler := ForwardLog(3, sent.append))
    logger.setLevel(logging.INFO)
    try:
        logger.info("targets: ONNX Runtime provider CPUExecutionProvider")
        logger.info("targets: style s.png 64x48: cache hit 0123456789ab")
        logger.warning("cannot keep the passes of a.mp4")
    finally:
        logger.removeHandler(handler)
    assert sent == [Log(3, "targets: ONNX Runtime provider CPUExecutionProvider"),
                    Log(3, "cannot keep the passes of a.mp4", warning=True)]


def test_status_types_the_last_run_s_set_items_again_as_they_were_read(tmp_path):
    """`status`'s resume command repeats run.json's --set values: read back, they are the same
    (numbers, words, lists and paths)."""
    from pipeline.bulk.again import set_items
    from pipeline.bulk.manifest import parse_overrides
    from pipeline.bulk.run_state import read_run_info, write_run_info

    given = parse_overrides(["size=256", "style_weight=1e-05", "lbfgs_clamp=false", "tol=0.1",
                             "style_layers=relu1_1,relu3_1", "optimizer=adam",
                             f"init={tmp_path / 'start here.png'}"])
    write_run_info(tmp_path, "id", tmp_path / "m.parquet", [], {}, given)
    assert parse_overrides(set_items(read_run_info(tmp_path).overrides)) == given


def test_status_resumes_with_the_options_the_run_was_given_but_credentials(tmp_path):
    """run.json keeps the options a command line gave (status repeats them; an older
    run.json has none: --skip-bad-rows only, where rows were left out),
    the storage options but credentials, and says that credentials were left out."""
    from pipeline.bulk.again import Again, again
    from pipeline.bulk.run_state import read_run_info, write_run_info

    given = again(["--precision", "fp32", "--no-report"],
                  ["endpoint_url=http://h:9000", "key=AKIA", "client_kwargs.region_name=x",
                   "secret=s3cr3t", "session_token=t"])
    assert given == Again(("--precision", "fp32", "--no-report",
                           "--storage-option", "endpoint_url=http://h:9000",
                           "--storage-option", "client_kwargs.region_name=x"), True)
    write_run_info(tmp_path, "id", tmp_path / "m.parquet", [], {1: "bad"}, {"size": 64}, given)
    info = read_run_info(tmp_path)
    assert info.again == given
    said = info.again.command(["pipeline", "run", "m.parquet", "--out", "o"], ["size=64"])
    assert said == ("pipeline run m.parquet --out o --precision fp32 --no-report "
                    "--storage-option endpoint_url=http://h:9000 --storage-option "
                    "client_kwargs.region_name=x --set size=64 (and the credentials given by "
                    "--storage-option)")
    assert "AKIA" not in (tmp_path / "run.json").read_text()
    for invalid, words in (({}, ()), ({1: "bad"}, ("--skip-bad-rows",))):
        write_run_info(tmp_path, "id", tmp_path / "m.parquet", [], invalid, {})
        assert read_run_info(tmp_path).again == Again(words)


def test_status_s_resume_command_names_a_manifest_in_the_home_folder_so_a_shell_finds_it(
        tmp_path, monkeypatch):
    """Not `~/m.parquet`: quoted (as a path with a space must be), a shell would not expand it."""
    from pipeline.bulk.run_state import write_run_info

    home, out, elsewhere = tmp_path / "my home", tmp_path / "my home" / "out", tmp_path / "x"
    out.mkdir(parents=True)
    elsewhere.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(elsewhere)
    write_run_info(out, "id", home / "m.parquet", [("k" * 64, "a.png")], {}, {})
    said = json.loads(runner.invoke(app, ["status", str(out), "--json"]).stdout)
    assert shlex.split(said["resume_command"]) == [
        "pipeline", "run", str(home / "m.parquet"), "--out", str(out)], said
