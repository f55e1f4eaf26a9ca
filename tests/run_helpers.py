"""Helpers for the bulk-run tests: a small dataset, the CLI in-process or as a subprocess."""

import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.io.images import to_tensor
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
           "--checkpoint-every", "2", *options]
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
