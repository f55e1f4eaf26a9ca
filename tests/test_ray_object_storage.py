"""A Ray cluster whose machines share nothing but an S3 server: a head and two 1-CPU worker
nodes on this machine, each node with its own cache folder (where it keeps its copy of the run
folder, its fetched inputs and its copy of the shared cache in the bucket), as separate
machines have their own disks. The driver has its own too, and the nodes learn the server's
address and keys, and the cache's URL, from the run alone."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.run_helpers import local_cluster
from tests.s3_server import upload, use_server

ray = pytest.importorskip("ray", reason="the ray extra: pip install -e '.[cpu,dev,ray]'")
pytest.importorskip("s3fs", reason="the s3 extra: pip install -e '.[s3]'")

STORE = 100 * 2**20  # object store bytes per node: only small events pass through it
ITERATIONS = 30  # long enough that a node's loss lands mid-batch, after a checkpoint (every 5)
SAME = {"size": 32, "iterations": ITERATIONS}  # fp32, batch 1: the local run's arithmetic


def pinned_cache(pinned: Path, models: bool = True) -> Path:
    """A cache with the model (exported by an earlier test, else by the first run that uses
    the cache) and one side of the L-BFGS history (history_probe.py) for every thread count.
    Each process would measure it otherwise, and a timing taken while other tests run can
    pick the other side, which rounds otherwise."""
    import shutil

    import torch

    from pipeline.accel.machine import cpu_model, probe_entry
    from tests.conftest import _CACHE

    (pinned / "models").mkdir(parents=True)
    for model in sorted((Path(_CACHE) / "models").glob("*")) if models else ():
        if model.suffix != ".lock":
            shutil.copyfile(model, pinned / "models" / model.name)
    (pinned / "probes").mkdir()
    for threads in range(1, (os.cpu_count() or 1) + 1):
        probe_entry(pinned, "history", [cpu_model(), torch.__version__, threads]).write_text(
            '"left"')
    return pinned


@pytest.fixture(scope="module")
def nodes(tmp_path_factory):
    """(cluster, {node: its user cache dir}); the nodes start before any test sets the S3
    server's options, so they cannot inherit them."""
    root = tmp_path_factory.mktemp("nodes")
    own = [{"num_cpus": 1, "object_store_memory": STORE,
            "env_vars": {"XDG_CACHE_HOME": str(root / name)}} for name in ("a", "b")]
    with local_cluster({"num_cpus": 0, "object_store_memory": STORE,
                        "env_vars": {"XDG_CACHE_HOME": str(root / "head")}}, own) as (
            c, added):
        yield c, {node: root / name / "style-pipeline"
                  for node, name in zip(added, ("a", "b"), strict=True)}


def test_a_cluster_sharing_only_a_bucket_runs_a_manifest_and_survives_a_lost_node(
        nodes, s3_server, monkeypatch, tmp_path):
    """`pipeline run s3://.../manifest.parquet --out s3://.../out --distributor ray`: the node
    running a batch is removed after a job's checkpoint reached the bucket; the other node,
    which never saw that node's disk, takes the batch over from the bucket's checkpoint. The
    outputs (in the bucket only) equal a local run's, each job recorded done once. The cache is
    in the bucket too: the nodes take the ONNX model from there, and every target a node
    computed is there for the others."""
    import shutil

    import pyarrow.parquet as pq
    import torch

    from pipeline.accel.runtime import RuntimeOptions
    from pipeline.bulk import ledger
    from pipeline.bulk.manifest import parse_overrides
    from pipeline.bulk.runner import RunOptions, exit_code, run_manifest
    from tests.run_helpers import images_in, make_dataset, node_remover, run_cli

    c, caches = nodes
    endpoint, served = s3_server
    manifest = make_dataset(tmp_path / "local")
    # One cache for the reference run and, copied, the bucket's
    pinned = pinned_cache(tmp_path / "pinned")
    reference = tmp_path / "reference"
    # The convolutions pinned direct: a Winograd plan is measured per cache (winograd.py),
    # and this reference run's cache is not the bucket's that the nodes share.
    made = run_cli(manifest, reference, "--precision", "fp32", "--winograd", "off",
                   "--batch-size", "1", "--set",
                   "size=32", "--set", f"iterations={ITERATIONS}", "--workers",
                   str(os.cpu_count() or 1), "--cache-dir", str(pinned))
    assert made.exit_code == 0, made.output
    use_server(monkeypatch, endpoint)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "driver"))
    upload(manifest.parent, f"s3://bucket/{tmp_path.name}/data")
    url = f"s3://bucket/{tmp_path.name}"
    shared = served / "bucket" / tmp_path.name / "cache"
    for part in ("models", "probes"):
        shutil.copytree(pinned / part, shared / part,
                        ignore=shutil.ignore_patterns("*.lock", "pixelcost-*"))
    there = served / "bucket" / tmp_path.name / "out"  # the objects, as files
    removed, resumed = [], []
    saboteur = node_remover(c, list(caches), lambda: list((there / ".checkpoints").glob(
        "job-*.pt")), removed, resumed)

    # With intermediate images, which change no output: objects of their own, none kept here
    opts = RunOptions(f"{url}/out", batch_size=1, checkpoint_every=5, checkpoint_budget=1,
                      overrides=parse_overrides([f"{k}={v}" for k, v in SAME.items()]
                                                + ["save_every=10"]),
                      runtime=RuntimeOptions(precision="fp32", winograd=False,
                                             cache=f"{url}/cache"),
                      distributor="ray",
                      ray_address=c.address)
    result = run_manifest(f"{url}/data/manifest.parquet", opts, saboteur)
    assert removed, "no node was removed: the run ended before a checkpoint"
    assert exit_code(result) == 0, result
    assert result.done == 6 and not result.pending and not result.failed
    assert resumed and all(5 <= it < ITERATIONS for it in resumed)  # from the bucket's copy
    parts = [row for part in sorted((there / "ledger").glob("part-*.parquet"))
             for row in pq.read_table(part).to_pylist()]
    done = [(r["key"], r["output"]) for r in parts if r["status"] == ledger.DONE]
    assert len(done) == len(set(done)) == 6  # each job recorded done exactly once
    images = {name: image for name, image in images_in(there).items() if ".iter" not in name}
    expected = images_in(reference)
    assert images.keys() == expected.keys() and len(images) == 6
    assert list(there.glob("*.iter0010.png"))
    for name, image in images.items():
        assert torch.equal(image, expected[name]), name
    # Each node wrote in its own copy of the folder and kept no output or intermediate image
    # there (the bucket has them); the driver's copy holds the run's state, no output. The
    # removed node may have died between writing an image and dropping it once uploaded: what
    # it left in its copy is only what the bucket has too.
    def copies(lived: bool) -> list[Path]:
        return [p for node, cache in caches.items() if (node not in removed) == lived
                for p in (cache / "shared").glob("*/runs/*")]

    assert any(list(copy.glob("ledger/part-*.parquet")) for copy in copies(True)), caches
    assert not [p for copy in copies(True) for p in copy.glob("*.png")]
    assert {p.name for copy in copies(False) for p in copy.glob("*.png")} <= {
        p.name for p in there.glob("*.png")}
    driver = tmp_path / "driver" / "style-pipeline" / "shared"
    assert not list(driver.glob("*/runs/*/*.png"))
    assert list(driver.glob("*/runs/*/ledger/part-*.parquet"))
    targets = {p.relative_to(shared).as_posix() for p in (shared / "targets").rglob("*.*")}
    for cache in caches.values():
        (copy,) = (cache / "shared").iterdir()
        assert [p.name for p in (copy / "models").glob("*.onnx")] == [
            p.name for p in (shared / "models").glob("*.onnx")]
        here = {p.relative_to(copy).as_posix() for p in (copy / "targets").rglob("*.*")}
        assert here and here <= targets


def test_a_multi_pass_video_spreads_over_nodes_that_share_only_a_bucket(
        nodes, s3_server, monkeypatch, tmp_path):
    """A clip's passes go out in pieces to both nodes. A piece needs its neighbours of the
    previous pass, which the other node may have made: it reads them from the bucket, as it
    cannot see that node's disk. No piece fails over to the clip made whole, and the video
    equals the one a single local worker makes (fp64)."""
    import shutil
    from fractions import Fraction

    import av
    import numpy as np
    from typer.testing import CliRunner

    from pipeline.bulk.manifest import write_manifest
    from pipeline.cli import app
    from pipeline.video.synthetic import camera_clip, drawn_scene, write_clip
    from tests.conftest import make_painting
    from tests.run_helpers import cell

    c, caches = nodes
    if len([n for n in caches if n in c.worker_nodes]) < 2:  # the test before removed one
        c.add_node(num_cpus=1, object_store_memory=STORE,
                   env_vars={"XDG_CACHE_HOME": str(tmp_path / "node")})
        c.wait_for_nodes()
    endpoint, served = s3_server
    data = tmp_path / "data"
    data.mkdir()
    write_clip(camera_clip(drawn_scene((160, 120)), (48, 36), 8), data / "clip.mp4",
               Fraction(8))
    make_painting().save(data / "style.png")
    write_manifest([{"content": "clip.mp4", "style": "style.png", "output": "styled.mp4"}],
                   data / "m.parquet")
    passes = ["--precision", "fp64", "--targets", "torch", "--winograd", "off", "--set",
              "size=32", "--set", "iterations=4", "--set", "passes=3", "--set",
              "pass_iterations=3", "--set", "tol=0", "--batch-size", "2"]
    runner = CliRunner()
    pinned = pinned_cache(tmp_path / "pinned", models=False)
    whole = runner.invoke(app, ["run", str(data / "m.parquet"), "--out", str(tmp_path / "whole"),
                                "--devices", "cpu", "--workers", "1", "--cache-dir",
                                str(pinned), *passes], terminal_width=200)
    assert whole.exit_code == 0, whole.output
    use_server(monkeypatch, endpoint)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "driver"))
    url = f"s3://bucket/{tmp_path.name}"
    upload(data, f"{url}/data")
    # The cache in the bucket: each node then works in a copy of the run folder of its own
    shutil.copytree(pinned / "probes", served / "bucket" / tmp_path.name / "cache" / "probes")
    spread = runner.invoke(app, ["run", f"{url}/data/m.parquet", "--out", f"{url}/out",
                                 "--distributor", "ray", "--ray-address", c.address,
                                 "--cache-dir", f"{url}/cache", *passes], terminal_width=200)
    assert spread.exit_code == 0, spread.output
    assert "goes on whole" not in spread.output, spread.output
    pieces = cell(spread.output, "pass pieces")
    assert ", w1 " in pieces, pieces  # both nodes took pieces
    there = served / "bucket" / tmp_path.name / "out"
    assert not list(there.glob("*.frames"))  # the frames and passes gone once the video is

    def frames(path):
        with av.open(str(path)) as container:
            return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]

    made, alone = frames(there / "styled.mp4"), frames(tmp_path / "whole" / "styled.mp4")
    assert len(made) == len(alone) == 8
    for a, b in zip(made, alone, strict=True):
        assert np.abs(a.astype(int) - b).mean() < 0.05
