"""Video rows in a bulk run: found by `manifest build`, run next to image rows (frame i of every
clip in one batch), done only as whole videos carrying their key, resumed from a frame's
checkpoint after a kill -9, and played by the report in a real browser. One run of a small
dataset (two drawn clips, one with audio, and a photo) serves the whole file."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from fractions import Fraction

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.bulk import ledger, traces
from pipeline.bulk.checkpoint import CheckpointSaver
from pipeline.bulk.checkpoint_files import saved_checkpoints
from pipeline.bulk.manifest import write_manifest
from pipeline.cli import app
from tests.conftest import make_painting, make_photo
from tests.run_helpers import ROOT, cell, runner, wait_for

av = pytest.importorskip("av", reason="the video extra: pip install -e '.[video]'")
pytest.importorskip("cv2", reason="the video extra: pip install -e '.[video]'")

from pipeline.io.video import probe, video_metadata  # noqa: E402
from pipeline.video.synthetic import camera_clip, drawn_scene, write_clip  # noqa: E402

# Frames after the first run all their iterations (tol 0), so a kill finds a frame mid-way.
VIDEO_FAST = ["--devices", "cpu", "--workers", "1", "--precision", "fp32", "--set", "size=32",
              "--set", "iterations=6", "--set", "frame_iterations=8", "--set", "tol=0",
              "--checkpoint-every", "2", "--checkpoint-budget", "1"]
FRAMES = {"a": 8, "b": 6}


@pytest.fixture(scope="module")
def video_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    content, style = root / "content", root / "style"
    content.mkdir()
    style.mkdir()
    scene = drawn_scene((320, 240))
    write_clip(camera_clip(scene, (64, 48), FRAMES["a"]), content / "a.mp4", Fraction(8))
    write_clip(camera_clip(scene[::-1].copy(), (64, 48), FRAMES["b"], pan=-2),
               content / "b.mp4", Fraction(8), audio=False)
    make_photo((64, 48)).save(content / "p.png")
    make_painting().save(style / "s.png")
    manifest = root / "manifest.parquet"
    result = runner.invoke(app, ["manifest", "build", "--content-dir", str(content),
                                 "--style-dir", str(style), "-o", str(manifest)])
    assert result.exit_code == 0, result.output
    return manifest


@pytest.fixture(scope="module")
def finished(video_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("finished") / "out"
    result = runner.invoke(app, ["run", str(video_dataset), "--out", str(out), *VIDEO_FAST],
                           terminal_width=200)
    assert result.exit_code == 0, result.output
    return out, result.output


def _outputs(out):
    return {p.name.split("__")[0]: p for p in out.iterdir() if p.suffix in (".mp4", ".png")}


def _frames(path):
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def test_video_rows_run_beside_image_rows_as_whole_videos(video_dataset, finished):
    out, output = finished
    rows = pq.read_table(video_dataset).to_pylist()
    assert sorted(r["content"].rsplit("/", 1)[-1] for r in rows) == ["a.mp4", "b.mp4", "p.png"]
    assert cell(output, "done now") == "3"
    assert cell(output, "time").endswith("outputs/hour)")  # a video is one output
    outputs = _outputs(out)
    assert outputs["a"].suffix == ".mp4" and outputs["p"].suffix == ".png"
    for name, count in FRAMES.items():
        got, source = probe(outputs[name]), probe(video_dataset.parent / "content" / f"{name}.mp4")
        assert got.fps == source.fps and len(_frames(outputs[name])) == count
        assert got.has_audio == (name == "a") and got.size == (32, 24)
        assert not outputs[name].with_name(outputs[name].name + ".frames").exists()
    records = {r["output"].split("__")[0]: r for r in ledger.read(out).values()}
    assert records["a"]["started_at"] == records["b"]["started_at"]  # one batch, frame by frame
    assert video_metadata(outputs["a"])["job_key"] == records["a"]["key"]
    found = traces.read(out)
    for name, count in FRAMES.items():  # a point per frame, the temporal term from frame 1
        points = found[records[name]["key"]]
        assert [p["frame"] for p in points] == list(range(count))
        assert "temporal" not in points[0] and all(p["temporal"] > 0 for p in points[1:])
        assert [p["iteration"] for p in points] == [6] + [8] * (count - 1)
    again = runner.invoke(app, ["run", str(video_dataset), "--out", str(out), *VIDEO_FAST],
                          terminal_width=200)
    assert again.exit_code == 0 and cell(again.output, "done before (skipped)") == "3"


def test_an_init_image_s_bytes_are_in_a_video_job_s_key(video_dataset, tmp_path):
    """The first frame starts from the init image: other bytes at the same path, another job."""
    from pipeline.bulk.manifest import parse_overrides
    from pipeline.bulk.scan import scan

    init = tmp_path / "init.png"

    def key(*overrides: str) -> str:
        jobs = scan(video_dataset, tmp_path / "out", parse_overrides(overrides)).jobs
        return next(job.key for job in jobs if job.spec.content.name == "a.mp4")

    keys = [key()]
    for seed in (0, 1):
        make_photo((64, 48), seed=seed).save(init)
        keys.append(key(f"init={init}"))
    assert len(set(keys)) == 3


@pytest.mark.parametrize("mode", ["cross", "dataset"])
def test_a_grid_over_video_options_multiplies_the_video_rows_only(video_dataset, tmp_path,
                                                                   mode):
    """--param temporal_weight=0,500 x size=32,48: four jobs per clip, each with its own
    options and output, and two for the photo, which takes no video option. A value a video
    job refuses is a one-line error naming it."""
    from pipeline.bulk.scan import scan

    content, style = video_dataset.parent / "content", video_dataset.parent / "style"
    inputs = (["--content", str(content), "--style", str(style)] if mode == "cross" else
              ["--content-dir", str(content), "--style-dir", str(style), "--mirror"])
    grid = ["--param", "temporal_weight=0,500", "--param", "size=32,48"]
    manifest = tmp_path / "grid.parquet"
    result = runner.invoke(app, ["manifest", "build", *inputs, *grid, "-o", str(manifest)])
    assert result.exit_code == 0, result.output
    jobs = scan(manifest, tmp_path / "out", {}).jobs
    made = sorted((job.spec.content.name, job.spec.params.size,
                   job.spec.video and job.spec.video.temporal_weight) for job in jobs)
    assert made == sorted([(clip, size, weight) for clip in ("a.mp4", "b.mp4")
                           for size in (32, 48) for weight in (0.0, 500.0)]
                          + [("p.png", 32, None), ("p.png", 48, None)])
    assert len({job.spec.output for job in jobs}) == len(jobs) == 10
    refused = runner.invoke(app, ["manifest", "build", *inputs, "--param", "passes=3,1",
                                  "-o", str(tmp_path / "bad.parquet")])
    assert refused.exit_code == 2
    assert refused.output.strip().splitlines() == [
        "error: --param passes=1: passes must be 0 (the frame chain) or at least 2, got 1"]


def test_a_video_is_done_by_the_key_inside_it(finished, tmp_path):
    """Without the ledger, a video output counts as done by the job key in its metadata: the
    right job's video is done, another job's whole video in its place is pending."""
    out, _ = finished
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    shutil.rmtree(copy / "ledger")
    outputs = _outputs(copy)
    outputs["b"].write_bytes(outputs["a"].read_bytes())
    result = runner.invoke(app, ["status", str(copy)], terminal_width=200)
    assert cell(result.output, "done") == "2" and cell(result.output, "pending") == "1"


def test_the_report_plays_each_video(finished, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    out, _ = finished
    browser.get((out / "report.html").as_uri())
    videos = browser.find_elements(By.TAG_NAME, "video")
    assert len(videos) == 2
    for video in videos:
        browser.execute_script("arguments[0].scrollIntoView(); arguments[0].load()", video)
        WebDriverWait(browser, 30).until(
            lambda b, v=video: b.execute_script("return arguments[0].readyState", v) >= 2)
        assert browser.execute_script("return arguments[0].videoWidth", video) == 32
        poster = video.get_attribute("poster")
        assert poster and "report_files/thumbs/" in poster
    # per-frame curves: the temporal term in the video cells only
    assert len(browser.find_elements(By.CSS_SELECTOR, "svg.curve polyline.temporal")) == 2
    assert len(browser.find_elements(By.CSS_SELECTOR, "svg.curve polyline.total")) == 3


def test_a_killed_video_run_resumes_from_its_frame_checkpoint(video_dataset, finished,
                                                              tmp_path):
    """kill -9 while a frame batch has a checkpoint and earlier frames are written: the rerun
    reads those frames back untouched, resumes the frame from its checkpoint, and the videos
    equal the uninterrupted run's frame for frame."""
    reference, _ = finished
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "pipeline", "run", str(video_dataset), "--out", str(out),
           *VIDEO_FAST]

    def frames_written():
        return sorted(out.glob("*.mp4.frames/frame_*.png"))

    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True, text=True)
    wait_for(lambda: len(frames_written()) >= 4 and bool(saved_checkpoints(out)))
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    kept = {p: p.stat().st_mtime_ns for p in frames_written()}
    assert saved_checkpoints(out) and not list(out.glob("*.mp4"))
    status = runner.invoke(app, ["status", str(out)], terminal_width=200)
    done = sorted(len(list(f.glob("frame_*.png"))) for f in out.glob("*.mp4.frames"))
    frames = str(done[0]) if done[0] == done[-1] else f"{done[0]}-{done[-1]}"
    plural = "s" if len(done) > 1 else ""
    said = f"{len(done)} video{plural} with {frames} frames done"
    assert said in cell(status.output, "pending"), status.output
    result = runner.invoke(app, ["run", str(video_dataset), "--out", str(out), *VIDEO_FAST],
                           terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "from its checkpoint at iteration" in result.output
    assert all(not p.exists() or p.stat().st_mtime_ns == t for p, t in kept.items())
    assert not saved_checkpoints(out)
    ours, theirs = _outputs(out), _outputs(reference)
    for name in FRAMES:
        a, b = _frames(ours[name]), _frames(theirs[name])
        assert len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def test_a_frame_batch_keeps_its_checkpoint_until_each_of_its_frames_is_written(tmp_path):
    """A run killed after writing frame 2 of one clip but not the other's resumes that frame's
    batch from its checkpoint (video/chain.py runs it again for both)."""
    import torch

    from pipeline.bulk.video_batch import FrameCheckpoints
    from pipeline.video.frames import Frame

    def saves():
        return FrameCheckpoints(tmp_path, ["key-a", "key-b"], 2, lambda: False, lambda t: None,
                                CheckpointSaver())

    first = saves()
    first(2, [0, 1]).save(4, torch.rand(2, 3, 8, 8), {"step": torch.zeros(2)})
    pixels = np.zeros((8, 8, 3), np.uint8)
    first.finished(Frame(0, 2, pixels, {}, 6, 0.1))
    assert len(saved_checkpoints(tmp_path)) == 1
    resume = saves()(2, [0, 1]).resume
    assert resume is not None and resume[0] == 4
    first.finished(Frame(1, 2, pixels, {}, 6, 0.1))
    assert not saved_checkpoints(tmp_path)


def test_bad_video_rows_fail_alone(video_dataset, tmp_path):
    rows = pq.read_table(video_dataset).to_pylist()
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video\n" * 250)  # random bytes: 1 in 300 probed as audio
    rows += [dict(rows[0], content=str(broken)),
             dict(rows[0], output="as-image.png"),
             dict(rows[0], output="negative.mp4", temporal_weight=-1.0)]
    manifest = write_manifest(rows, video_dataset.parent / "bad.parquet")
    result = runner.invoke(app, ["manifest", "validate", str(manifest)], terminal_width=300)
    assert result.exit_code != 0
    assert f"row 3: {broken}: not a video FFmpeg can read" in result.output
    assert "row 4: output 'as-image.png' of a video must end in .mp4" in result.output
    assert "row 5: temporal_weight must be >= 0" in result.output


# The multi-pass scheme in fp64: a frame's result does not depend on how its pass was cut.
PASSES = ["--devices", "cpu", "--precision", "fp64", "--set", "size=32", "--set", "iterations=4",
          "--set", "passes=3", "--set", "pass_iterations=3", "--set", "tol=0",
          "--batch-size", "2"]


def test_one_multi_pass_video_spreads_over_workers_and_resumes_at_any_cut(video_dataset,
                                                                          tmp_path):
    """On two workers one clip's passes go out in pieces that both take, a pass after the
    other. Killed while its second pass is kept in part, the run goes on from the kept
    pieces (none done again) and ends with the video one worker makes whole."""
    rows = [r for r in pq.read_table(video_dataset).to_pylist()
            if r["content"].endswith("a.mp4")]
    manifest = write_manifest(rows, video_dataset.parent / "one.parquet")
    whole = tmp_path / "whole"
    alone = runner.invoke(app, ["run", str(manifest), "--out", str(whole), "--workers", "1",
                                *PASSES], terminal_width=200)
    assert alone.exit_code == 0, alone.output
    assert "pass pieces" not in alone.output
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "run", str(manifest), "--out",
                             str(out), "--workers", "2", *PASSES], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True, text=True)
    wait_for(lambda: bool(list(out.glob("*.mp4.frames/passes/001-*.pt"))))
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not list(out.glob("*.mp4"))
    result = runner.invoke(app, ["run", str(manifest), "--out", str(out), "--workers", "2",
                                 *PASSES], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "kept by an earlier run" in result.output and "goes on whole" not in result.output
    pieces = cell(result.output, "pass pieces")  # 4 a pass (8 frames, 2 a batch, 2 workers)
    assert pieces.startswith("12 (w0 ") and ", w1 " in pieces, pieces
    assert not list(out.glob("*.mp4.frames"))
    ours, theirs = _outputs(out)["a"], _outputs(whole)["a"]
    for a, b in zip(_frames(ours), _frames(theirs), strict=True):
        assert np.abs(a.astype(int) - b).mean() < 0.05
