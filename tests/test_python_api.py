"""The Python of docs/python-api.md, run as a user runs it: each block as a script of its own
(`python script.py`, no `if __name__ == "__main__"` guard), at test sizes."""

import ast
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.io.images import read_metadata
from tests.conftest import make_painting, make_photo
from tests.run_helpers import ROOT

DOC = ROOT / "docs" / "python-api.md"
# The doc's sizes and iteration counts, and what the test runs instead.
SMALLER = [(r"size=512, iterations=300", "size=32, iterations=3"),
           (r'"size=256,512"\]', '"size=32,48", "iterations=3"]'),
           (r"size=256", "size=32, iterations=3"),
           (r"frame_iterations=150", "frame_iterations=2")]


def _blocks() -> list[str]:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
    for i, block in enumerate(blocks):
        for doc, test in SMALLER:
            block = re.sub(doc, test, block)
        blocks[i] = block
    return blocks


def _inputs(folder: Path) -> None:
    """Every file the doc names."""
    for name in ("photo.jpg", "a.jpg", "b.jpg", "photos/p.jpg",
                 *(f"photo{i}.jpg" for i in range(10))):
        (folder / name).parent.mkdir(exist_ok=True)
        make_photo((40, 32), seed=len(name)).save(folder / name)
    for name in ("painting.jpg", "s.jpg", "s1.jpg", "s2.jpg", "paintings/q.jpg"):
        (folder / name).parent.mkdir(exist_ok=True)
        make_painting((32, 32), seed=len(name)).save(folder / name)
    sky = np.zeros((32, 40), np.uint8)
    sky[:16] = 255
    Image.fromarray(sky).save(folder / "a-sky.png")
    Image.fromarray(255 - sky).save(folder / "a-ground.png")


def _run(script: str, folder: Path) -> str:
    (folder / "script.py").write_text(script)
    done = subprocess.run([sys.executable, "script.py"], cwd=folder, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_the_docs_blocks_are_what_this_test_runs():
    """Each size in the doc is replaced: a block that changed would otherwise run at full size."""
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
    assert len(blocks) == 3
    for doc, _ in SMALLER[:-1]:
        assert re.search(doc, blocks[0]), doc
    assert "frame_iterations=150" in blocks[1] and "size=256" in blocks[2]


def test_the_first_block_runs_as_a_script(tmp_path):
    """It ends in run_manifest, which starts workers: they must not run the script again."""
    _inputs(tmp_path)
    printed = _run(_blocks()[0] + '\nprint("exit", exit_code(outcome))\n', tmp_path)
    assert printed.splitlines()[-1] == "exit 0", printed
    assert read_metadata(tmp_path / "out.png")["params"]["size"] == 32
    assert pq.read_table(tmp_path / "trace.parquet").num_rows > 0
    assert (tmp_path / "out" / "report.html").exists()
    assert len(pq.read_table(tmp_path / "m.parquet")) == 2


def test_the_slots_block_runs_as_a_script(tmp_path):
    _inputs(tmp_path)
    printed = _run(_blocks()[2], tmp_path)
    ended = [ast.literal_eval(line) for line in printed.splitlines()]
    assert sorted(i for batch in ended for i, _ in batch) == list(range(10))
    assert all(iterations == 3 for batch in ended for _, iterations in batch)


def test_the_video_block_runs_as_a_script(tmp_path):
    """From the top-level names alone: the video written, then done on a second call."""
    from fractions import Fraction

    pytest.importorskip("av", reason="the video extra: pip install -e '.[video]'")
    pytest.importorskip("cv2", reason="the video extra: pip install -e '.[video]'")
    from pipeline.io.video import probe
    from pipeline.video.synthetic import camera_clip, drawn_scene, write_clip

    _inputs(tmp_path)
    write_clip(camera_clip(drawn_scene((160, 120)), (48, 36), 3), tmp_path / "clip.mp4",
               Fraction(8))
    printed = _run(_blocks()[1], tmp_path)
    assert printed.splitlines() == ["3 0 [3, 2, 2]"], printed
    assert probe(tmp_path / "clip-styled.mp4").frames == 3
    again = _run(_blocks()[1], tmp_path)
    assert again.splitlines() == ["3 3 []"], again
