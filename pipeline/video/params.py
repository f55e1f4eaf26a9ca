"""The options of a video job beyond StyleParams': which part of the clip, at which frame rate,
how strongly frames are tied together, and how the result is encoded. Each field is one option
(options.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import InputError
from ..options import as_dict, check, option, result_dict

# Ruder et al.'s, whose losses are normalized as ours (neural-style's, on 0-255 pixels);
# measured on the synthetic benchmark clip in BENCHMARKS.md.
TEMPORAL_WEIGHT = 1000.0


@dataclass(frozen=True)
class VideoParams:
    temporal_weight: float = option(TEMPORAL_WEIGHT, "Weight of the temporal loss: each frame's "
                                    "squared difference (per pixel, 0-255 scale) from the "
                                    "earlier stylized frames warped into it by the optical "
                                    "flow, where the flow is consistent. 0 = independent frames "
                                    "(they flicker).", lo=0)
    temporal_frames: tuple[int, ...] = option((1, 2, 4), "Earlier frames (how many back, "
                                              "each between 1 and 64) each frame is tied to; "
                                              "each pixel counts for the nearest one that saw "
                                              "it (long-term consistency).")
    frame_iterations: int = option(200, "Most iterations of a frame after the first (it starts "
                                        "from the previous stylized frame warped into it, and "
                                        "early stopping usually ends it sooner); the first "
                                        "frame gets --iterations.", lo=1, hi=100_000)
    frame_tol_window: int = option(20, "Early stopping window of the frames after the first "
                                       "(--tol applies).", lo=1, hi=100_000)
    passes: int = option(0, "0 = the frame chain (each frame from the one before it). 2 or "
                            "more = multi-pass: every frame optimized at once, alternating "
                            "forward and backward passes, each blending a frame with its "
                            "warped neighbour; the first pass gives each frame --iterations, "
                            "the later ones --pass-iterations.", lo=0, hi=1000)
    pass_iterations: int = option(50, "Multi-pass: iterations of each frame in a pass after "
                                      "the first.", lo=1, hi=100_000)
    pass_blend: float = option(0.5, "Multi-pass: how much of the warped neighbour a frame "
                                    "starts each pass from, where the flow is consistent "
                                    "(Ruder et al.'s delta).", lo=0, hi=1)
    start: str = option("0", "Where the clip starts: seconds (12.5 or 12.5s) or frames of the "
                             "input (300f).", key=False)
    end: str | None = option(None, "Where the clip ends, as --start; none = at its end.",
                             key=False)
    fps: float | None = option(None, "Frame rate of the output: frames are picked as a player "
                                     "would show them at that rate; none = the input's.",
                               above=0, hi=1000)
    crf: int = option(18, "H.264 quality (constant rate factor): lower is better and larger; "
                          "18 is visually lossless for most clips. (x264's macroblock tree is "
                          "off, so the same frames always encode to the same bytes.)",
                      lo=0, hi=51, key=False)

    def to_dict(self) -> dict[str, Any]:
        """Every field, tuples as lists."""
        return as_dict(self)

    def result_dict(self) -> dict[str, Any]:
        """The options that decide the frames (not the part's bounds or the encoding: the
        job key holds the part as seconds)."""
        return result_dict(self)

    def validate(self) -> VideoParams:
        """InputError naming the first bad option; self when all are valid."""
        check(self)
        if self.passes == 1:
            raise InputError("passes must be 0 (the frame chain) or at least 2, got 1")
        frames = self.temporal_frames
        if not frames or len(set(frames)) != len(frames) or not all(1 <= j <= 64 for j in frames):
            raise InputError(f"temporal_frames must be distinct numbers between 1 and 64, got "
                             f"{','.join(map(str, frames)) or 'none'}")
        return self
