"""Clips with an exact optical flow, made from one still image: a camera pans, zooms and turns
over the scene while a sprite crosses it. Tests make tiny ones from drawn images and the
benchmarks bigger ones from a photo; no video needs to be downloaded, and the ground truth
measures stability (the paper's measure) without trusting an estimated flow.

Frame t shows scene point A_t p + b_t at pixel p. A pixel p of frame t was at
A_{t-1}^-1 (A_t p + b_t - b_{t-1}) in frame t-1, unless the sprite covers one of the two.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms.functional import gaussian_blur

from ..gatys.temporal import warp


@dataclass
class Clip:
    """Frames [H, W, 3] uint8; per frame t > 0, the exact flow to frame t-1 [H, W, 2] and
    where pixels of t were visible in t-1 [H, W] bool (index 0 holds None)."""

    frames: list[np.ndarray]
    back_flow: list[np.ndarray | None] = field(default_factory=list)
    visible: list[np.ndarray | None] = field(default_factory=list)


def _camera(t: int, size: tuple[int, int], scene: tuple[int, int], pan: float, zoom: float,
            turn: float) -> tuple[np.ndarray, np.ndarray]:
    """A_t (2x2) and b_t: frame pixel -> scene point, centred on the scene and moving."""
    w, h = size
    sw, sh = scene
    scale = 0.8 * min(sw / w, sh / h) / zoom**t  # the view fits the scene with room to move
    angle = math.radians(turn * t)
    c, s = math.cos(angle), math.sin(angle)
    a = scale * np.array([[c, -s], [s, c]])
    centre = np.array([sw / 2 + pan * t * scale, sh / 2 + 0.3 * pan * t * scale])
    return a, centre - a @ np.array([w / 2, h / 2])


def _sprite(t: int, size: tuple[int, int]) -> tuple[float, float, float]:
    """Centre (x, y) and radius of a disc crossing the frame left to right."""
    w, h = size
    return 0.2 * w + 0.08 * w * t, 0.55 * h, 0.12 * min(w, h)


def _sample(image: torch.Tensor, points: np.ndarray) -> np.ndarray:
    """Bilinear samples of image [1, 3, H, W] at points [h, w, 2] (x, y pixels) -> [h, w, 3]."""
    h, w = image.shape[2:]
    grid = torch.from_numpy(points * (2 / np.array([w - 1, h - 1])) - 1).float()[None]
    out = F.grid_sample(image, grid, mode="bilinear", padding_mode="border", align_corners=True)
    return out[0].permute(1, 2, 0).numpy()


def camera_clip(scene: np.ndarray, size: tuple[int, int], frames: int, pan: float = 2.0,
                zoom: float = 1.01, turn: float = 0.4) -> Clip:
    """`frames` frames of size (w, h) over `scene` [H, W, 3] uint8: per frame the camera moves
    `pan` frame pixels, zooms in by `zoom` and turns `turn` degrees; a sprite moves 8% of the
    width per frame."""
    w, h = size
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    pixels = np.stack([xs, ys], -1)
    source = torch.tensor(scene).permute(2, 0, 1)[None].float()
    # Blurred to the frame's scale first: point samples of finer detail would alias, and the
    # frames would differ by more than the flow explains.
    spacing = 0.8 * min(scene.shape[1] / w, scene.shape[0] / h)
    if spacing > 1:
        sigma = 0.6 * spacing
        source = gaussian_blur(source, [2 * math.ceil(3 * sigma) + 1] * 2, [sigma, sigma])
    clip = Clip([])
    for t in range(frames):
        a, b = _camera(t, size, (scene.shape[1], scene.shape[0]), pan, zoom, turn)
        points = pixels @ a.T + b
        frame = _sample(source, points)
        cx, cy, r = _sprite(t, size)
        disc = (xs - cx) ** 2 + (ys - cy) ** 2 < r**2
        frame[disc] = (40.0, 200.0, 255.0) * (0.75 + 0.25 * np.sin(xs[disc] - cx))[:, None]
        clip.frames.append(frame.round().clip(0, 255).astype(np.uint8))
        if t == 0:
            clip.back_flow.append(None)
            clip.visible.append(None)
            continue
        a0, b0 = _camera(t - 1, size, (scene.shape[1], scene.shape[0]), pan, zoom, turn)
        before = (points - b0) @ np.linalg.inv(a0).T
        px, py, _ = _sprite(t - 1, size)
        before[disc] = pixels[disc] - (cx - px, cy - py)
        was_disc = (before[..., 0] - px) ** 2 + (before[..., 1] - py) ** 2 < r**2
        inside = ((before[..., 0] >= 0) & (before[..., 0] <= w - 1)
                  & (before[..., 1] >= 0) & (before[..., 1] <= h - 1))
        clip.back_flow.append((before - pixels).astype(np.float32))
        clip.visible.append(inside & (was_disc == disc))
    return clip


def stability(stylized: list[np.ndarray], clip: Clip) -> float:
    """Mean squared difference (0-255 scale) between each stylized frame and the one before
    it warped by the exact flow, over the pixels visible in both: Ruder et al.'s measure."""
    errors = []
    for t in range(1, len(stylized)):
        flow, visible = clip.back_flow[t], clip.visible[t]
        assert flow is not None and visible is not None
        now = torch.from_numpy(stylized[t]).permute(2, 0, 1)[None].float()
        before = torch.from_numpy(stylized[t - 1]).permute(2, 0, 1)[None].float()
        warped = warp(before, torch.from_numpy(flow).permute(2, 0, 1)[None])
        diff = (now - warped).square().mean(1)[0].numpy()
        errors.append(float(diff[visible].mean()))
    return float(np.mean(errors))


def write_clip(clip: Clip, path: Path, fps: Fraction = Fraction(8), audio: bool = True,
               keyframes: int = 0) -> None:
    """The clip as an H.264 file, with a 440 Hz tone as its audio (AAC) when `audio`; a
    keyframe every `keyframes` frames (0: the encoder's choice, one for a short clip)."""
    import av

    h, w = clip.frames[0].shape[:2]
    with av.open(str(path), mode="w") as out:
        video = out.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = w, h, "yuv420p"
        video.options = {"crf": "10", **({"x264-params": f"keyint={keyframes}:min-keyint="
                                          f"{keyframes}:scenecut=0"} if keyframes else {})}
        sound = out.add_stream("aac", rate=44100, layout="mono") if audio else None
        for i, rgb in enumerate(clip.frames):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = i
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
        if sound is not None:
            seconds = len(clip.frames) / fps
            samples = int(44100 * seconds)
            tone = 0.2 * np.sin(2 * np.pi * 440 * np.arange(samples) / 44100)
            for start in range(0, samples, 1024):
                chunk = tone[start:start + 1024].astype(np.float32)[None]
                frame = av.AudioFrame.from_ndarray(chunk, format="flt", layout="mono")
                frame.sample_rate, frame.pts = 44100, start
                out.mux(sound.encode(frame))
            out.mux(sound.encode(None))


def drawn_scene(size: tuple[int, int] = (320, 240), seed: int = 0) -> np.ndarray:
    """A scene with structure at every scale (gradients, discs, stripes) for tests."""
    w, h = size
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    rgb = np.stack([255 * xs / w, 255 * ys / h, 128 + 60 * np.sin(xs / 7) * np.cos(ys / 11)], -1)
    for _ in range(12):
        cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(8, 40)
        rgb[(xs - cx) ** 2 + (ys - cy) ** 2 < r**2] = rng.uniform(0, 255, 3)
    img = torch.from_numpy(rgb).permute(2, 0, 1)[None]
    return F.avg_pool2d(F.pad(img, (1, 1, 1, 1), mode="replicate"), 3, 1)[0].permute(
        1, 2, 0).numpy().clip(0, 255).astype(np.uint8)
