"""Helpers for the bulk-run tests: a small dataset, the CLI in-process or as a subprocess, a
Ray cluster on this machine and a display that removes one of its nodes mid-run."""

import os
import re
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.io.pixels import to_tensor
from tests.conftest import make_painting, make_photo

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()
# One CPU worker unless a test asks for two (`--workers 2` after these wins): a worker's start
# costs more than its tiny jobs.
FAST = ["--devices", "cpu", "--workers", "1", "--set", "size=32", "--set", "iterations=6",
        "--precision", "fp32"]


def make_dataset(tmp_path):
    """3 contents x 2 styles = a 6-job manifest, paths relative to the manifest's folder."""
    images = tmp_path / "data"
    (images / "content").mkdir(parents=True)
    (images / "style").mkdir()
    for i, size in enumerate([(64, 48), (48, 64), (64, 48)]):
        make_photo(size, seed=i).save(images / "content" / f"c{i}.png")
    for i in range(2):
        make_painting(seed=10 + i).save(images / "style" / f"s{i}.png")
    manifest = images / "manifest.parquet"
    result = runner.invoke(app, ["manifest", "build", "--content", str(images / "content"),
                                 "--style", str(images / "style"), "-o", str(manifest)])
    assert result.exit_code == 0, result.output
    return manifest


def cell(output: str, label: str) -> str:
    """The value beside `label` in a rich summary table."""
    for line in output.splitlines():
        cells = [c.strip() for c in line.strip("│ ").split("│")]
        if len(cells) == 2 and cells[0] == label:
            return cells[1]
    raise AssertionError(f"{label!r} not in:\n{output}")


def run_cli(manifest, out, *extra):
    return runner.invoke(app, ["run", str(manifest), "--out", str(out), *FAST, *extra],
                         terminal_width=200)


# jobs finish one by one, so a kill finds some done
ONE_BY_ONE = ("--workers", "2", "--precision", "fp32", "--batch-size", "1")


def spawn_run(manifest, out, iterations, options=ONE_BY_ONE):
    cmd = [sys.executable, "-m", "pipeline", "run", str(manifest), "--out", str(out),
           "--devices", "cpu", "--set", "size=32", "--set", f"iterations={iterations}",
           "--checkpoint-every", "2", "--checkpoint-budget", "1", *options]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True, text=True)


def wait_for(predicate, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    pytest.fail("timed out")


def images_in(out):
    return {p.name: to_tensor(Image.open(p).convert("RGB")) for p in out.glob("*.png")}


def node_remover(cluster, nodes, checkpointed, removed: list, resumed: list):
    """A run display (RunDisplay) that removes the node of the first worker past iteration 5
    once `checkpointed()` (appending it to `removed`), and collects the iterations workers
    say they resume from (`resumed`)."""
    from pipeline.bulk.events import Iteration, Log
    from pipeline.cli.progress import RunDisplay

    class Saboteur(RunDisplay):
        def __init__(self, total, devices):
            super().__init__(total, devices)
            self.labels = devices

        def handle(self, event):
            super().handle(event)
            if isinstance(event, Log) and (said := re.search(
                    r"resuming from its checkpoint at iteration (\d+)/", event.message)):
                resumed.append(int(said.group(1)))
            if (isinstance(event, Iteration) and event.iteration >= 6 and not removed
                    and checkpointed()):
                label = self.labels[event.worker]
                node = next(n for n in nodes if label.startswith(f"node {n.node_id[:6]}"))
                removed.append(node)
                cluster.remove_node(node)

    return Saboteur


@contextmanager
def local_cluster(head: dict, nodes: list[dict]):
    """A Ray cluster on this machine (`ray.cluster_utils.Cluster`): a head with `head`'s
    arguments and a node per item of `nodes`; yields (cluster, the nodes)."""
    import ray
    from ray.cluster_utils import Cluster

    saved = {k: os.environ.pop(k, None) for k in ("RAY_AUTH_MODE", "RAY_ADDRESS")}
    os.environ["RAY_AUTH_MODE"] = "disabled"
    c = Cluster(initialize_head=True, head_node_args=head)
    added = [c.add_node(**args) for args in nodes]
    c.wait_for_nodes()
    try:
        yield c, added
    finally:
        if ray.is_initialized():
            ray.shutdown()
        c.shutdown()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
