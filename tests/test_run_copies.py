"""This machine's copies of run folders in object storage are a part of the cache: the bucket
has all they hold, so `pipeline cache clear runs` deletes them, but never one that a running
command works in."""

from __future__ import annotations

import subprocess
import sys

from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.io.mirror import staging_folder
from tests.run_helpers import ROOT

runner = CliRunner()
HOLD = ("import sys; from pathlib import Path; from pipeline.io.run_copies import hold; "
        "hold(Path(sys.argv[1])); print('held', flush=True); sys.stdin.read()")


def test_cache_clear_runs_keeps_a_copy_in_use_and_deletes_the_others(tmp_path):
    cache = tmp_path / "cache"
    idle, busy = (staging_folder(url, cache) for url in ("s3://bucket/old", "s3://bucket/now"))
    for copy in (idle, busy):
        (copy / "ledger").mkdir(parents=True)
        (copy / "ledger" / "part.parquet").write_bytes(b"x" * 1000)
    (cache / "runs" / "notes.txt").write_text("the user's")
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(busy)], cwd=ROOT, text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline().strip() == "held"
        info = runner.invoke(app, ["cache", "info", "--cache-dir", str(cache)],
                             terminal_width=200)
        assert info.exit_code == 0, info.output
        assert "runs (local copies of bucket run folders)" in info.output, info.output

        def clear():
            result = runner.invoke(app, ["cache", "clear", "runs", "--cache-dir", str(cache)])
            assert result.exit_code == 0, result.output
            return " ".join(result.output.split())

        said = clear()
        assert "1 file(s) removed" in said and "1 in use by a running command kept" in said, said
        assert not idle.exists() and (busy / "ledger" / "part.parquet").is_file()
    finally:
        holder.stdin.close()
        holder.wait(30)
    said = clear()  # the command has ended
    assert "file(s) removed" in said and "in use" not in said, said
    assert not busy.exists() and (cache / "runs" / "notes.txt").read_text() == "the user's"


def test_a_copy_is_in_use_from_its_hold_to_its_release(tmp_path):
    """What a run into a bucket does with its copy: a process that goes on after the run (the
    Python API running many) no longer holds it."""
    from pipeline.io.run_copies import hold, release, unused

    copy = staging_folder("s3://bucket/out", tmp_path)
    hold(copy)
    try:
        with unused(copy) as free:
            assert not free
    finally:
        release(copy)
    with unused(copy) as free:
        assert free
