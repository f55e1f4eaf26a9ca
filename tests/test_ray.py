"""The Ray distributor on a real (simulated) multi-node cluster: a head with no CPUs and two
1-CPU worker nodes on this machine, as `ray.cluster_utils.Cluster` starts them."""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from pipeline.bulk import ledger
from tests.run_helpers import ROOT, images_in, local_cluster

ray = pytest.importorskip("ray", reason="the ray extra: pip install -e '.[cpu,dev,ray]'")

# Equal outputs need equal arithmetic: fp32, one job per batch, one thread per worker (each
# node has one CPU; the local run gets as many workers as cores).
SAME = ["--precision", "fp32", "--batch-size", "1", "--set", "size=32"]
STORE = 100 * 2**20  # object store bytes per node: only small events pass through it
# Long enough that a stop or a node's loss lands mid-batch, after a checkpoint (every 5)
ITERATIONS = 30


@pytest.fixture(scope="module")
def cluster():
    store = {"object_store_memory": STORE}
    with local_cluster({"num_cpus": 0, **store}, [{"num_cpus": 1, **store}] * 2) as made:
        yield made


def _pipeline(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline", "run", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "COLUMNS": "200"})


@pytest.fixture(scope="module")
def dataset_module(tmp_path_factory):
    from tests.run_helpers import make_dataset

    root = tmp_path_factory.mktemp("ray")
    return make_dataset(root), root


@pytest.fixture(scope="module")
def reference(dataset_module):
    """The local run every Ray run here must equal, byte for byte."""
    dataset, root = dataset_module
    out = root / "local"
    done = _pipeline(str(dataset), "--out", str(out), "--devices", "cpu", "--workers",
                     str(os.cpu_count() or 1), "--set", f"iterations={ITERATIONS}", *SAME)
    assert done.returncode == 0, done.stdout + done.stderr
    return images_in(out)


def _assert_equal(out, reference) -> None:
    import torch

    images = images_in(out)
    assert images.keys() == reference.keys() and len(images) == 6
    for name, img in images.items():
        assert torch.equal(img, reference[name]), name


def test_ctrl_c_checkpoints_every_worker_of_the_cluster_and_the_resumed_run_equals_a_local_one(
        cluster, dataset_module, reference, tmp_path):
    """Through the CLI on a head and two worker nodes: Ctrl-C while both nodes run a batch, then
    the same command again. Jobs finished before the stop and jobs resumed from a checkpoint
    alike end as the local run's bytes."""
    import signal

    import torch

    from pipeline.bulk.checkpoint_files import saved_checkpoints
    from tests.run_helpers import cell, wait_for

    c, _ = cluster
    dataset, _ = dataset_module
    out = tmp_path / "ray"
    args = [str(dataset), "--out", str(out), "--distributor", "ray", "--ray-address", c.address,
            "--set", f"iterations={ITERATIONS}", "--checkpoint-every", "5",
            "--checkpoint-budget", "1", "--workers", "2", *SAME]
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "run", *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "COLUMNS": "200"})

    def early(path):  # a checkpoint with most of its job still to run
        try:
            return torch.load(path, weights_only=True)["iteration"] <= ITERATIONS // 3
        except (OSError, RuntimeError, EOFError):  # gone (its job ended) or being replaced
            return False

    def caught() -> bool:  # both nodes run a job, and one of them is early in it
        found = saved_checkpoints(out)
        return len(found) >= 2 and any(map(early, found))

    try:
        wait_for(caught, timeout=300)
        proc.send_signal(signal.SIGINT)
        text = proc.communicate(timeout=120)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, text
    assert "each worker saves a checkpoint" in text
    assert int(cell(text, "pending")) == 6 - int(cell(text, "done now"))
    # A job was caught two thirds from its end, and the workers look for the stop at each
    # iteration here (a local folder): it is saved, unless the driver took longer to pass the
    # stop on than it took to end. Each job checkpointed resumes.
    kept = len(saved_checkpoints(out))
    assert kept >= 1
    again = _pipeline(*args)
    text = again.stdout + again.stderr
    assert again.returncode == 0, text
    assert text.count("resuming from its checkpoint at iteration") == kept, text
    assert "node " in text  # the workers are named by node in the display and summary
    assert re.search(r"--workers 2: node \w+ has 1 core; running one CPU worker per core",
                     text), text  # a node of one CPU runs one, and says so
    rows = ledger.read(out).values()
    assert len(rows) == 6 and all(r["status"] == "done" for r in rows)
    _assert_equal(out, reference)


@pytest.mark.parametrize("cost_s, gap_s", [(20e-6, 1e-3), (0.02, 1.0)])
def test_a_ray_worker_looks_for_a_stop_as_often_as_the_lookup_cost_allows(
        tmp_path, monkeypatch, cost_s, gap_s):
    """A local file's lookup (microseconds) is made about every millisecond, so a job a few
    iterations from its end is saved, not finished past the stop; a bucket's (a round trip)
    about once a second. On a clock of its own, so the machine's speed decides nothing."""
    import types

    from pipeline.bulk.distributors import ray_cluster

    clock = [0.0]
    looks = []

    def exists(path):
        looks.append(clock[0])
        clock[0] += cost_s
        return path.exists()

    monkeypatch.setattr(ray_cluster, "time", types.SimpleNamespace(monotonic=lambda: clock[0]))
    monkeypatch.setattr(ray_cluster.mirror, "exists", exists)
    worker = ray_cluster.RayWorker(0, 1, None, None)
    worker.stop_file = ray_cluster.stop_file(tmp_path, "run")
    iteration_s = 1e-4
    while clock[0] < 3.0:
        assert not worker.stopping()
        clock[0] += iteration_s
    gaps = [b - a for a, b in itertools.pairwise(looks)]
    assert gap_s * 0.999 <= min(gaps) and max(gaps) <= gap_s + cost_s + iteration_s
    worker.stop_file.parent.mkdir(parents=True)
    worker.stop_file.touch()
    clock[0] = looks[-1] + ray_cluster.STOP_LOOK_EVERY_S
    assert worker.stopping()


def test_losing_a_node_mid_run_loses_and_repeats_nothing(cluster, dataset_module, reference,
                                                         tmp_path):
    """The node running a batch is removed after a job's checkpoint at iteration 5: its batch
    goes to the other node's actor, which resumes the job from that checkpoint."""
    from pipeline.accel.runtime import RuntimeOptions
    from pipeline.bulk.checkpoint_files import saved_checkpoints
    from pipeline.bulk.manifest import parse_overrides
    from pipeline.bulk.runner import RunOptions, exit_code, run_manifest
    from tests.run_helpers import node_remover

    c, nodes = cluster
    dataset, _ = dataset_module
    out = tmp_path / "ray"
    removed, resumed = [], []
    saboteur = node_remover(c, nodes, lambda: saved_checkpoints(out), removed, resumed)

    opts = RunOptions(out, batch_size=1, checkpoint_every=5, checkpoint_budget=1,
                      overrides=parse_overrides(["size=32", f"iterations={ITERATIONS}"]),
                      runtime=RuntimeOptions(precision="fp32"), distributor="ray",
                      ray_address=c.address)
    try:
        result = run_manifest(dataset, opts, saboteur)
    finally:  # the cluster is the module's: give it its two nodes back
        for _ in removed:
            nodes.append(c.add_node(num_cpus=1, object_store_memory=STORE))
        c.wait_for_nodes()
    assert removed, "no node was removed: the run ended before a checkpoint"
    assert exit_code(result) == 0, result
    assert result.done == 6 and not result.pending and not result.failed
    assert resumed and all(5 <= it < ITERATIONS for it in resumed)  # from its checkpoint
    parts = [row for part in sorted(ledger.ledger_dir(out).glob("part-*.parquet"))
             for row in pq.read_table(part).to_pylist()]
    done = [(r["key"], r["output"]) for r in parts if r["status"] == ledger.DONE]
    assert len(done) == len(set(done)) == 6  # each job recorded done exactly once
    _assert_equal(out, reference)


def test_one_multi_pass_video_spreads_over_the_nodes(cluster, tmp_path):
    """A multi-pass video's passes go out in pieces to both nodes' actors, which share them
    through the run folder; the video comes out whole."""
    from fractions import Fraction

    pytest.importorskip("av", reason="the video extra: pip install -e '.[video]'")
    pytest.importorskip("cv2", reason="the video extra: pip install -e '.[video]'")
    from pipeline.bulk.manifest import write_manifest
    from pipeline.io.video import probe
    from pipeline.video.synthetic import camera_clip, drawn_scene, write_clip
    from tests.conftest import make_painting
    from tests.run_helpers import cell

    c, _ = cluster
    write_clip(camera_clip(drawn_scene((320, 240)), (64, 48), 6), tmp_path / "a.mp4",
               Fraction(8), audio=False)
    make_painting().save(tmp_path / "s.png")
    manifest = write_manifest([{"content": "a.mp4", "style": "s.png", "output": "a.mp4"}],
                              tmp_path / "one.parquet")
    out = tmp_path / "ray"
    done = _pipeline(str(manifest), "--out", str(out), "--distributor", "ray", "--ray-address",
                     c.address, "--batch-size", "1", "--set", "size=32", "--set",
                     "iterations=4", "--set", "passes=3", "--set", "pass_iterations=3")
    text = done.stdout + done.stderr
    assert done.returncode == 0, text
    pieces = cell(text, "pass pieces")  # 6 frames, 2 actors: 3 pieces of 2 frames a pass
    assert pieces.startswith("9 (w0 ") and ", w1 " in pieces, pieces
    assert probe(out / "a.mp4").frames == 6 and not (out / "a.mp4.frames").exists()


def test_ray_without_the_extra_is_a_one_line_error(dataset, tmp_path, monkeypatch):
    from pipeline.cli import app
    from tests.run_helpers import runner

    monkeypatch.setitem(sys.modules, "ray", None)
    monkeypatch.delitem(sys.modules, "pipeline.bulk.distributors.ray_cluster", raising=False)
    result = runner.invoke(app, ["run", str(dataset), "--out", str(tmp_path / "out"),
                                 "--distributor", "ray"])
    assert result.exit_code == 2
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and '.[ray]' in errors[0], result.output


def test_an_actor_imports_torch_with_the_collector_paused_and_freezes_it():
    """A Ray actor's process imports the distributors, torch among them, to make its worker:
    with no full collection over torch's objects as it does (collector.py), and the actor
    freezes what the imports made, as a local run's fork server does."""
    code = ("import gc, sys, ray\n"
            "full = []\n"
            "gc.callbacks.append(lambda phase, info: phase == 'start' and info['generation'] == 2"
            " and full.append(1))\n"
            "from pipeline.bulk.distributors.ray_cluster import RayWorker\n"
            "assert 'torch' in sys.modules\n"
            "RayWorker(0, 1, None, None)\n"
            "print(len(full), gc.get_freeze_count())\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, check=True)
    full, frozen = map(int, done.stdout.split())
    assert full == 0 and frozen > 100_000, done.stdout
