"""Video: the temporal term, flow and consistency against a synthetic camera's exact flow, the
frame chain (stability, batching, resuming) and `pipeline video` end to end with audio. Clips
are drawn here (pipeline/video/synthetic.py), never downloaded."""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import subprocess
import sys
import time
from fractions import Fraction

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.gatys.params import StyleParams
from pipeline.gatys.temporal import Temporal, consistency, nearest_first, warp
from tests.conftest import make_painting

av = pytest.importorskip("av", reason="the video extra: pip install -e '.[video]'")
pytest.importorskip("cv2", reason="the video extra: pip install -e '.[video]'")

from pipeline.io.video import probe  # noqa: E402
from pipeline.video.chain import stylize_clips  # noqa: E402
from pipeline.video.flow import flow_pair  # noqa: E402
from pipeline.video.frames import ClipSource  # noqa: E402
from pipeline.video.params import VideoParams  # noqa: E402
from pipeline.video.synthetic import camera_clip, drawn_scene, stability, write_clip  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
runner = CliRunner()
FAST = ["--device", "cpu", "--precision", "fp32", "--size", "48", "--iterations", "12",
        "--frame-iterations", "6"]


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)[None].double()


def test_the_folded_temporal_term_is_the_sum_over_earlier_frames():
    """Value and gradient of Temporal equal sum_j gamma * mean(c_j (x - w_j)^2), with the
    long-term weights nearest first."""
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(2, 3, 12, 16, generator=g, dtype=torch.float64) * 255).requires_grad_(True)
    warped = [torch.rand(2, 3, 12, 16, generator=g, dtype=torch.float64) * 255 for _ in range(3)]
    raw = [(torch.rand(2, 1, 12, 16, generator=g, dtype=torch.float64) > 0.3).double()
           for _ in range(3)]
    weights = nearest_first(raw)
    assert torch.all(sum(weights) <= 1)  # each pixel counts once, for its nearest frame
    assert torch.equal(weights[0], raw[0])
    folded = Temporal.of(warped, weights, 7.0).loss(x)
    direct = sum(7.0 * (c * (x - w).square()).mean((1, 2, 3))
                 for c, w in zip(weights, warped, strict=True))
    torch.testing.assert_close(folded, direct, rtol=1e-12, atol=1e-9)
    (g1,) = torch.autograd.grad(folded.sum(), x)
    (g2,) = torch.autograd.grad(direct.sum(), x)
    torch.testing.assert_close(g1, g2, rtol=1e-12, atol=1e-12)


def test_warp_by_the_exact_flow_and_the_consistency_of_the_estimated_one():
    """The synthetic camera's exact flow warps frame t-1 onto frame t where both see the
    scene; DIS's flow is close to it, and its consistency weights drop the pixels the sprite
    uncovered and keep most of the rest."""
    clip = camera_clip(drawn_scene((320, 240)), (96, 72), 3)
    before, now = _t(clip.frames[1]), _t(clip.frames[2])
    exact, visible = torch.from_numpy(clip.back_flow[2]), clip.visible[2]
    warped = warp(before, exact.permute(2, 0, 1)[None].double())
    err = (warped - now).abs().mean(1)[0].numpy()
    assert np.median(err[visible]) < 4 and err[visible].mean() < 0.5 * err[~visible].mean()
    back, fwd = flow_pair(clip.frames[2], clip.frames[1])
    off = (back[0].permute(1, 2, 0) - exact).norm(dim=-1).numpy()
    assert np.median(off[visible]) < 0.5
    c = consistency(back, fwd)[0, 0].numpy().astype(bool)
    assert c[visible].mean() > 0.8
    # Uncovered: hidden in t-1 though inside it. Pixels that entered at the border are hidden
    # too, but no round trip can tell (the flow there is extrapolated, and consistent).
    h, w = visible.shape
    yy, xx = np.mgrid[0:h, 0:w]
    sx, sy = xx + exact[..., 0].numpy(), yy + exact[..., 1].numpy()
    uncovered = ~visible & (sx >= 0) & (sx <= w - 1) & (sy >= 0) & (sy <= h - 1)
    assert uncovered.sum() > 50 and c[uncovered].mean() < c[visible].mean() - 0.3


def _frames_of(clip):
    return ClipSource(lambda i: clip.frames[i], len(clip.frames), [make_painting()])


def _chain(clips, params, video, runtime, done=lambda c, i: None):
    out: dict[int, list[np.ndarray]] = {c: [] for c in range(len(clips))}
    stylize_clips([_frames_of(c) for c in clips], params, video, runtime, done,
                  lambda f: out[f.clip].append(f.pixels))
    return out


def test_frames_tied_by_the_temporal_term_flicker_less_than_independent_ones(cpu32):
    """The paper's stability measure on a clip with exact flow: at least 2x lower for the
    chain and for the multi-pass scheme than for independent frames (about 3.5x here), later
    frames at most --frame-iterations, each pass --pass-iterations."""
    clip = camera_clip(drawn_scene((320, 240)), (48, 36), 4)
    params = StyleParams(size=48, iterations=30)
    tied: list[np.ndarray] = []
    iterations: list[int] = []
    stylize_clips([_frames_of(clip)], params, VideoParams(frame_iterations=15), cpu32,
                  lambda c, i: None,
                  lambda f: (tied.append(f.pixels), iterations.append(f.iterations)))
    alone = _chain([clip], params, VideoParams(temporal_weight=0), cpu32)[0]
    ours, baseline = stability(tied, clip), stability(alone, clip)
    assert ours < 0.5 * baseline, (ours, baseline)
    assert iterations[0] == 30 and all(n <= 15 for n in iterations[1:])
    passes: list = []
    stylize_clips([_frames_of(clip)], params, VideoParams(passes=3, pass_iterations=8), cpu32,
                  lambda c, i: None, passes.append)
    assert [f.index for f in passes] == list(range(4))
    assert all(f.iterations <= 30 + 2 * 8 for f in passes)
    multi = stability([f.pixels for f in passes], clip)
    assert multi < 0.5 * baseline, (multi, baseline)


def test_a_stopped_multi_pass_clip_goes_on_inside_its_pass_in_batches_of_any_size(
        cpu64, tmp_path, monkeypatch):
    """Stopped in its second pass after that pass's first batch (frames 0-1, two a batch), a
    clip keeps its first pass and that batch (ClipOutput's passes/, this job's alone). Run
    again three frames a batch, it does frame 2 of the second pass, then the third pass, and
    ends as an uninterrupted run of three frames a batch: a frame's result does not depend on
    how its pass was cut (fp64, as the other equivalence tests). Frame 2's neighbour, frame 1,
    is one this run has not prepared."""
    import functools

    from pipeline.gatys.engine import Interrupted
    from pipeline.video import chain, passes
    from pipeline.video.clip import clip_source
    from pipeline.video.output import PASSES, ClipOutput
    from pipeline.video.part import clip_part

    source = tmp_path / "clip.mp4"
    write_clip(camera_clip(drawn_scene((320, 240)), (32, 24), 3), source, Fraction(8))
    params = StyleParams(size=32, iterations=6, tol=0)
    video = VideoParams(passes=3, pass_iterations=4)
    part = clip_part(source, video)
    batches = []  # the iterations of each batch
    optimize = passes.stylize_prepared
    monkeypatch.setattr(passes, "stylize_prepared",
                        lambda *a, **k: batches.append(a[1].iterations) or optimize(*a, **k))

    def run(out: ClipOutput, batch: int, stop=lambda: False) -> list:
        monkeypatch.setattr(chain, "stylize_passes",
                            functools.partial(passes.stylize_passes, batch=batch))
        got: list = []
        stylize_clips([clip_source(part, [make_painting()], 1)], params, video, cpu64,
                      lambda c, i: None, got.append, stop=stop,
                      stores=lambda c: out.pass_store())
        return got

    def second_pass_begun(out: ClipOutput) -> bool:
        kept = out.pass_store().load()
        return kept is not None and kept.passes == 1 and bool(kept.current)

    whole = run(ClipOutput(part, tmp_path / "whole", "k"), batch=3)
    clip = ClipOutput(part, tmp_path / "stopped", "k")
    with pytest.raises(Interrupted):
        run(clip, batch=2, stop=lambda: second_pass_begun(clip))
    assert ClipOutput(part, tmp_path / "stopped", "another job").pass_store().load() is None
    kept = clip.pass_store().load()
    assert [m.iterations for m in kept.made.values()] == [6] * 3
    assert sorted(kept.current) == [0, 1]
    batches.clear()
    again = run(clip, batch=3)
    assert batches == [4, 4]  # the second pass's frame 2, then the third pass at once
    assert [f.iterations for f in again] == [f.iterations for f in whole] == [6 + 2 * 4] * 3
    for a, b in zip(again, whole, strict=True):
        assert np.abs(a.pixels.astype(int) - b.pixels).max() <= 1, a.index
    clip.finish(crf=18)  # a folder output: its frames stay, the passes go
    assert not (clip.folder / PASSES).exists()


def test_a_multi_pass_clip_resumed_past_frames_it_no_longer_decodes(cpu64, tmp_path,
                                                                     monkeypatch):
    """A clip longer than its decoded window (the last few frames) resumes from a store that
    holds frames from its middle: pass 1's frames 0-1 and 4-5 (two pieces of another worker,
    the clip then goes on whole on one), or pass 2's frames 0-3 (a run stopped there). The
    next pass needs the frames the resumed pass skipped, long decoded past: they were made
    when the frames after them were. Each run ends as an uninterrupted one (fp64)."""
    import functools

    from pipeline.gatys.engine import Interrupted
    from pipeline.targets.cache import TargetCache
    from pipeline.video import chain, passes
    from pipeline.video.chain import flow_folder
    from pipeline.video.clip import clip_source
    from pipeline.video.output import ClipOutput
    from pipeline.video.part import clip_part
    from pipeline.video.passes import stylize_piece

    source = tmp_path / "clip.mp4"
    write_clip(camera_clip(drawn_scene((160, 120)), (24, 16), 8), source, Fraction(8))
    params = StyleParams(size=24, iterations=4, tol=0)
    video = VideoParams(passes=3, pass_iterations=3)
    part = clip_part(source, video)
    monkeypatch.setattr(chain, "stylize_passes", functools.partial(passes.stylize_passes,
                                                                   batch=2))

    def run(out: ClipOutput, stop=lambda: False) -> list[np.ndarray]:
        got: list = []
        stylize_clips([clip_source(part, [make_painting()], 1)], params, video, cpu64,
                      lambda c, i: None, got.append, stop=stop,
                      stores=lambda c: out.pass_store())
        return [f.pixels for f in got]

    whole = run(ClipOutput(part, tmp_path / "whole", "k"))
    pieces = ClipOutput(part, tmp_path / "pieces", "k")
    for first in (0, 4):
        stylize_piece(clip_source(part, [make_painting()], 1, max(0, first - 1)), params,
                      video, cpu64, TargetCache(flow_folder(cpu64), 0), 0,
                      range(first, first + 2), 2, pieces.pass_store(shared=True))
    stopped = ClipOutput(part, tmp_path / "stopped", "k")

    def second_pass_half_done() -> bool:
        kept = stopped.pass_store().load()
        return kept is not None and kept.passes == 1 and len(kept.current) >= 4

    with pytest.raises(Interrupted):
        run(stopped, stop=second_pass_half_done)
    for out, kept in ((pieces, (0, [0, 1, 4, 5])), (stopped, (1, [0, 1, 2, 3]))):
        state = out.pass_store().load()
        assert (state.passes, sorted(state.current)) == kept
        for a, b in zip(run(out), whole, strict=True):
            assert np.abs(a.astype(int) - b).max() <= 1


def test_flows_are_computed_once_per_clip_and_size(tmp_path, monkeypatch):
    """The flows of a clip are cached by its frames' pixels: the same clip with another
    style computes none, and gets the same frames as with flows computed afresh."""
    from pipeline.accel.runtime import Runtime
    from pipeline.video import flow as flow_module

    runtime = Runtime.create("cpu", "fp32", channels_last=False, cache=str(tmp_path / "cache"),
                             targets="torch")  # a cache of its own, without an ONNX export
    clip = camera_clip(drawn_scene((320, 240)), (48, 36), 5)
    params = StyleParams(size=48, iterations=6)
    video = VideoParams(frame_iterations=4)
    _chain([clip], params, video, runtime)
    cached = sorted((tmp_path / "cache" / "flows").rglob("*.safetensors"))
    assert len(cached) == 1 + 2 + 2 + 3  # frames 1..4 to each earlier frame 1, 2, 4 back
    computed = _chain([clip], params, video, dataclasses.replace(runtime, cache_targets=False))[0]
    monkeypatch.setattr(flow_module, "flow", lambda *a: pytest.fail("a flow was recomputed"))
    again = _chain([clip], params, video, runtime)[0]
    assert sorted((tmp_path / "cache" / "flows").rglob("*.safetensors")) == cached
    for a, b in zip(again, computed, strict=True):  # fp16 storage: within a level
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 1


def test_two_clips_in_one_batch_equal_each_alone(cpu64):
    """Frame i of two clips runs as one batch; in fp64 each clip's frames are those it gets
    alone (conftest.cpu64)."""
    scene = drawn_scene((320, 240))
    clips = [camera_clip(scene, (48, 36), 3), camera_clip(scene[::-1].copy(), (48, 36), 4,
                                                           pan=-2)]
    params = StyleParams(size=48, iterations=6)
    video = VideoParams(frame_iterations=4)
    together = _chain(clips, params, video, cpu64)
    for c, clip in enumerate(clips):
        alone = _chain([clip], params, video, cpu64)[0]
        assert len(together[c]) == len(alone) == len(clip.frames)
        for a, b in zip(together[c], alone, strict=True):
            assert np.abs(a.astype(int) - b.astype(int)).max() <= 1


def test_a_frame_written_for_some_clips_runs_again_for_all_of_its_batch(cpu32):
    """Killed between writing frame 2 of clip 0 and of clip 1, the rerun runs frame 2 of both
    again as the batch it was (keeping clip 0's written frame, not writing it twice), so clip 1
    gets the bytes of an uninterrupted run: a batch of clip 1 alone rounds differently. A clip
    that got further (another run's batches) is not held back to redo a frame."""
    scene = drawn_scene((320, 240))
    clips = [camera_clip(scene, (48, 36), 4), camera_clip(scene[::-1].copy(), (48, 36), 3,
                                                           pan=-2)]
    params = StyleParams(size=48, iterations=6, tol=0)
    video = VideoParams(frame_iterations=4)

    def run(kept):
        batches, frames = {}, []

        def checkpointing(i, todo):
            batches[i] = list(todo)

        stylize_clips([_frames_of(c) for c in clips], params, video, cpu32,
                      lambda c, i: ref[c][i] if (c, i) in kept else None, frames.append,
                      checkpointing=checkpointing)
        return batches, frames

    ref: dict[int, list[np.ndarray]] = {0: [], 1: []}
    for frame in run(set())[1]:
        ref[frame.clip].append(frame.pixels)
    batches, frames = run({(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)})
    assert batches == {2: [0, 1], 3: [0]}
    assert [(f.clip, f.index, f.resumed) for f in frames if f.index >= 2] == [
        (0, 2, True), (1, 2, False), (0, 3, False)]
    for f in frames:
        assert np.array_equal(f.pixels, ref[f.clip][f.index]), (f.clip, f.index)
    batches, _ = run({(0, i) for i in range(4)} | {(1, 0)})
    assert batches == {1: [1], 2: [1]}


@pytest.fixture
def clip_file(tmp_path):
    path = tmp_path / "clip.mp4"
    write_clip(camera_clip(drawn_scene((320, 240)), (64, 48), 8), path, Fraction(8))
    style = tmp_path / "style.png"
    make_painting().save(style)
    return path, style


def test_video_end_to_end_keeps_rate_duration_and_audio(clip_file, tmp_path):
    source, style = clip_file
    out = tmp_path / "out" / "styled.mp4"
    result = runner.invoke(app, ["video", str(source), str(style), "-o", str(out), *FAST],
                           terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "audio copied" in result.output and "8 (0 from an earlier run)" in result.output
    assert "styled.mp4 (48x36, 8 fps" in result.output
    # Not a terminal: no bar, a plain line (at most a minute apart) and one at the end.
    assert "━" not in result.output
    assert re.search(r"^frames 8/8, frame 7: \d+ it, total \S+ ", result.output, re.M)
    got, want = probe(out), probe(source)
    assert got.fps == want.fps and got.has_audio
    assert abs(got.duration - want.duration) < 0.15
    with av.open(str(out)) as container:
        assert sum(1 for _ in container.decode(video=0)) == 8
        assert container.streams.audio[0].codec_context.name == "aac"
    assert not (tmp_path / "out" / "styled.mp4.frames").exists()  # frames removed when whole


def test_video_refuses_an_output_that_resolves_to_its_source(clip_file):
    source, style = clip_file
    before = source.read_bytes()
    out = source.parent / "new" / ".." / source.name  # `new` is made for the output
    result = runner.invoke(app, ["video", str(source), str(style), "-o", str(out), *FAST])
    assert result.exit_code == 2
    assert "the output would overwrite one of the inputs" in result.output
    assert source.read_bytes() == before
    # `.mp4` names no video, and is no folder of frames to make either
    hidden = source.parent / ".mp4"
    result = runner.invoke(app, ["video", str(source), str(style), "-o", str(hidden), *FAST])
    assert result.exit_code == 2 and not hidden.exists()
    assert "output has no name before its extension" in result.output


def test_part_of_a_clip_at_another_rate_into_a_folder(clip_file, tmp_path):
    """Also by the multi-pass scheme: every frame gets its first pass and two more."""
    source, style = clip_file
    out = tmp_path / "frames"
    result = runner.invoke(app, ["video", str(source), str(style), "-o", str(out), *FAST,
                                 "--start", "2f", "--end", "0.75", "--fps", "4", "--passes",
                                 "3", "--pass-iterations", "3", "--tol", "0"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["frame_000000.png", "frame_000001.png"]
    assert "18 per frame over 3 passes" in result.output  # 12 + 2 x 3 each


def test_the_summary_gives_the_size_written(clip_file, tmp_path):
    """An odd side: H.264 (yuv420p) takes a pixel off it; frames in a folder keep it."""
    source, style = clip_file
    for out, size in ((tmp_path / "odd.mp4", "46x34"), (tmp_path / "odd", "47x35")):
        result = runner.invoke(app, ["video", str(source), str(style), "-o", str(out), *FAST,
                                     "--size", "47", "--end", "2f"], terminal_width=200)
        assert result.exit_code == 0, result.output
        assert f"{out.name} ({size}, 8 fps" in result.output, result.output
    with av.open(str(tmp_path / "odd.mp4")) as container:
        assert (container.streams.video[0].width, container.streams.video[0].height) == (46, 34)
    assert Image.open(tmp_path / "odd" / "frame_000000.png").size == (47, 35)


# Direct convolutions where a resumed run is compared byte for byte: a Winograd plan is
# measured per thread count (accel/winograd.py), and the resume runs in this test process's.
SAME_CONVS = ("--winograd", "off")


def _spawn(source, style, out):
    """At this process's thread count, as the in-process resume runs: sums over a tensor are
    split by thread, so a frame optimized at another count can round differently
    (docs/guarantees.md)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    return subprocess.Popen([sys.executable, "-m", "pipeline", "video", str(source), str(style),
                             "-o", str(out), *FAST, *SAME_CONVS, "--tol", "0", "-q"], cwd=ROOT,
                            env=env, start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def test_sigterm_stops_pipeline_video_with_143_and_says_what_is_kept(clip_file, tmp_path,
                                                                     monkeypatch):
    from pipeline.video import file as video_file  # the command imports it when it runs

    def terminated(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)  # the signal's handler raises here
        raise AssertionError("SIGTERM did not stop the command")

    monkeypatch.setattr(video_file, "stylize_video_file", terminated)
    before = signal.getsignal(signal.SIGTERM)
    source, style = clip_file
    result = runner.invoke(app, ["video", str(source), str(style), "-o",
                                 str(tmp_path / "out.mp4"), *FAST], terminal_width=200)
    assert result.exit_code == 143, result.output
    assert "out.mp4.frames; the same command resumes where it stopped" in result.output
    assert signal.getsignal(signal.SIGTERM) is before  # the caller's again


def test_a_killed_video_resumes_at_its_frame_and_matches_an_uninterrupted_one(clip_file,
                                                                            tmp_path):
    source, style = clip_file
    reference = tmp_path / "reference"
    proc = _spawn(source, style, reference)
    assert proc.wait(timeout=600) == 0, proc.stdout.read()
    out = tmp_path / "out"
    proc = _spawn(source, style, out)
    deadline = time.time() + 300
    while len(list(out.glob("frame_*.png"))) < 3 and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    kept = {p.name: p.stat().st_mtime_ns for p in out.glob("frame_*.png")}
    assert 3 <= len(kept) < 8
    result = runner.invoke(app, ["video", str(source), str(style), "-o", str(out), *FAST,
                                 *SAME_CONVS, "--tol", "0"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert f"({len(kept)} from an earlier run)" in result.output
    for name, mtime in kept.items():  # finished frames are never redone
        assert (out / name).stat().st_mtime_ns == mtime
    for path in sorted(reference.glob("frame_*.png")):
        assert np.array_equal(np.asarray(Image.open(path)), np.asarray(Image.open(out / path.name)))


def test_bad_videos_are_one_line_errors(clip_file, tmp_path):
    source, style = clip_file
    empty, garbage, sound = tmp_path / "empty.mp4", tmp_path / "garbage.mp4", tmp_path / "a.m4a"
    empty.write_bytes(b"")
    garbage.write_bytes(b"not a video\n" * 400)  # random bytes: 1 in 300 probed as audio
    with av.open(str(sound), "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=8000, layout="mono")
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="flt",
                                           layout="mono")
        frame.sample_rate, frame.pts = 8000, 0
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    cases = [(empty, "not a video FFmpeg can read"), (garbage, "not a video FFmpeg can read"),
             (sound, "no video stream"), (tmp_path / "missing.mp4", "no such file"),
             (style, "is an image, not a video")]  # FFmpeg would read it as a 1-frame clip
    for path, message in cases:
        result = runner.invoke(app, ["video", str(path), str(style), "-o",
                                     str(tmp_path / "o.mp4"), *FAST])
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert result.exit_code == 2 and len(lines) == 1 and message in lines[0], result.output
    for args, message in [(["--start", "5"], "is not before the clip's end"),
                          (["--temporal-weight", "-1"], "temporal_weight must be >= 0"),
                          (["--start", "abc"], "seconds (12.5 or 12.5s) or frames (300f)")]:
        result = runner.invoke(app, ["video", str(source), str(style), "-o",
                                     str(tmp_path / "o.mp4"), *FAST, *args])
        assert result.exit_code == 2 and message in result.output, result.output
    assert not (tmp_path / "o.mp4").exists()


def test_the_same_frames_encode_to_the_same_video_bytes(tmp_path):
    """A run and its resume encode the same frames: they must give the same file. (With
    x264's macroblock tree, smooth moving frames like these gave two to five different
    streams in six or eight encodes.)"""
    from pipeline.io.video import write_video

    rng = np.random.default_rng(1)
    frames = [np.clip(f.astype(int) + rng.integers(-30, 30, f.shape), 0, 255).astype(np.uint8)
              for f in camera_clip(drawn_scene((640, 480), seed=1)[::-1].copy(), (64, 48), 8,
                                   pan=-2).frames]
    made = set()
    for i in range(6):
        write_video(iter(frames), tmp_path / f"{i}.mp4", Fraction(8))
        made.add((tmp_path / f"{i}.mp4").read_bytes())
    assert len(made) == 1


def test_odd_sized_frames_are_encoded_one_pixel_smaller(tmp_path):
    path = tmp_path / "odd.mkv"
    clip = camera_clip(drawn_scene((320, 240)), (65, 47), 3)
    with av.open(str(path), "w") as container:  # FFV1 takes odd sizes; H.264 does not
        stream = container.add_stream("ffv1", rate=8)
        stream.width, stream.height, stream.pix_fmt = 65, 47, "yuv444p"
        for i, rgb in enumerate(clip.frames):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    style = tmp_path / "s.png"
    make_painting().save(style)
    out = tmp_path / "odd-styled.mp4"
    result = runner.invoke(app, ["video", str(path), str(style), "-o", str(out), *FAST,
                                 "--size", "65"])
    assert result.exit_code == 0, result.output
    assert probe(out).size == (64, 46)


def test_a_video_s_digest_is_read_once_and_again_when_the_file_changes(tmp_path, monkeypatch):
    """Remembered in the cache by the file's identity: a rerun does not read a long video
    whole again; a file written again (new modification time) is read again."""
    from pipeline.io import files
    from pipeline.io.cache_entries import entries

    video, cache = tmp_path / "clip.mp4", tmp_path / "cache"
    video.write_bytes(b"frames" * files.REMEMBER_FROM)
    reads = []
    digest = files.file_digest
    monkeypatch.setattr(files, "file_digest", lambda p: reads.append(p) or digest(p))
    first = files.remembered_digest(video, cache)
    assert first == digest(video) and files.remembered_digest(video, cache) == first
    assert len(reads) == 1
    video.write_bytes(b"other" * files.REMEMBER_FROM)
    os.utime(video, ns=(1, 1))  # a new modification time, as any write gives
    second = files.remembered_digest(video, cache)
    assert second == digest(video) != first and len(reads) == 2
    (entry,) = [p for name in entries(cache, "digests").ours
                if (p := cache / "digests" / name).read_text() == second]
    entry.write_text("not a digest")  # a damaged entry is read through, then replaced
    assert files.remembered_digest(video, cache) == second and len(reads) == 3
    assert entry.read_text() == second
    os.utime(entry, (1, 1))  # read again: marked used (`cache clear --unused-for`)
    assert files.remembered_digest(video, cache) == second and entry.stat().st_mtime > 1
    small = tmp_path / "small.mp4"  # hashed sooner than an entry is written: each time
    small.write_bytes(b"x" * (files.REMEMBER_FROM - 1))
    assert files.remembered_digest(small, cache) == files.remembered_digest(small, cache)
    assert len(reads) == 5 and len(entries(cache, "digests").ours) == 2


def test_a_clip_read_from_a_later_frame_has_the_frames_read_from_its_start(tmp_path):
    """A piece of a pass seeks to its first frame: the frames it gets are those of a read
    from the clip's start, also for a part at another rate (keyframes every 4 frames, so the
    seek lands before the frame and decodes forward)."""
    from pipeline.video.clip import clip_source
    from pipeline.video.part import clip_part

    source = tmp_path / "clip.mp4"
    write_clip(camera_clip(drawn_scene((320, 240)), (64, 48), 20), source, Fraction(8),
               audio=False, keyframes=4)
    with av.open(str(source)) as container:
        assert sum(p.is_keyframe for p in container.demux(video=0) if p.size) == 5
    for video in (VideoParams(), VideoParams(start="0.3", fps=5.0)):
        part = clip_part(source, video)
        whole = clip_source(part, [], 1)
        frames = [whole.frame(i).copy() for i in range(part.count)]
        for first in (1, 5, part.count - 2):
            later = clip_source(part, [], 1, first)
            for i in range(first, part.count):
                assert np.array_equal(later.frame(i), frames[i]), (video, first, i)


@pytest.mark.parametrize("passes", [[], ["--passes", "2", "--pass-iterations", "3"]])
def test_one_mask_for_every_frame_styles_only_its_region(clip_file, tmp_path, passes):
    """A white left half: the style there, the content's pixels on the right (unmasked:
    content); a mask of another shape than the frames is refused before any frame."""
    from pipeline.io.video import read_frames

    source, style = clip_file
    mask = np.zeros((48, 64), np.uint8)
    mask[:, :32] = 255
    Image.fromarray(mask).save(tmp_path / "left.png")
    out = tmp_path / "frames"
    result = runner.invoke(app, ["video", str(source), str(style), "-o", str(out), *FAST,
                                 "--masks", str(tmp_path / "left.png"), *passes],
                           terminal_width=200)
    assert result.exit_code == 0, result.output
    info = probe(source)
    frames = list(read_frames(info, info.fps, 0, None))
    ratios = []  # the left 18 columns' change from the content over the right 18's
    for path, frame in zip(sorted(out.iterdir()), frames, strict=True):
        made = Image.open(path)  # --size 48: 48x36
        shrunk = np.asarray(Image.fromarray(frame).resize(made.size, Image.Resampling.LANCZOS))
        change = np.abs(np.asarray(made, np.float32) - shrunk).mean((0, 2))
        ratios.append(change[:18].mean() / change[30:].mean())
    # The temporal term carries styled pixels along the camera's pan into the right half, so
    # the ratio falls over the clip (3.3 at the first frame, about 2 at the eighth).
    assert ratios[0] > 2.5 and min(ratios) > 1.5, ratios
    Image.fromarray(mask[:, :40]).save(tmp_path / "narrow.png")
    refused = runner.invoke(app, ["video", str(source), str(style), "-o", str(tmp_path / "x"),
                                  *FAST, "--masks", str(tmp_path / "narrow.png")])
    assert refused.exit_code == 2 and "is not the shape of its image 64x48" in refused.output
