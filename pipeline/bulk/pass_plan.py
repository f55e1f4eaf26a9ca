"""One multi-pass video over several workers. Within a pass of the multi-pass scheme a frame
depends only on the previous pass's images (video/passes.py), so each pass is cut into pieces,
runs of frames that any worker may take, in any order; the pieces of a pass all finish before
the next pass is handed out (its frames need their neighbours of this one). Workers share
the passes through the clip's pass store beside its output (the run folder, which every
worker sees). When the last pass is whole the job itself is released, as a batch of its own:
its worker finds every pass kept and only writes the frames and encodes the video.

A piece that fails (or is left pending after killing its workers) ends the cutting: the job
is released whole, and its worker does what the store lacks, alone, as without a plan.
"""

from __future__ import annotations

from dataclasses import dataclass

from .jobs import Batch, Job, Piece

# Pieces of one pass, per worker: a second one lets a fast worker take over a slow one's share
# (a GPU beside a CPU) at the cost of one more start per pass.
PIECES_PER_WORKER = 2


def splits(job: Job, workers: int) -> bool:
    """Whether a job runs by pieces: a multi-pass video of several frames, on several workers."""
    return (workers > 1 and job.spec.video is not None and job.spec.video.passes >= 2
            and job.frames > 1)


@dataclass
class PassPlan:
    """The pieces of one job's passes as they are handed out and done."""

    job: Job
    workers: int
    current: int = 0   # the pass being handed out
    next: int = 0      # its first frame not handed out yet
    running: int = 0   # pieces handed out and not done
    cut_short: bool = False  # a piece failed: the rest runs whole
    released: bool = False   # the job itself handed out: the plan is over

    @property
    def passes(self) -> int:
        assert self.job.spec.video is not None
        return self.job.spec.video.passes

    def length(self, batch: int) -> int:
        """Frames of a piece for a worker of `batch` frames a batch: whole batches, about
        PIECES_PER_WORKER pieces per worker and pass."""
        share = -(-self.job.frames // (PIECES_PER_WORKER * self.workers))
        return batch * -(-share // batch)

    def take(self, batch: int) -> Batch | None:
        """The next piece, at `batch` frames a batch; the job itself once every pass is done;
        None while the pass's last pieces run."""
        if self.released:
            return None
        if not self.cut_short and self.current < self.passes and self.next < self.job.frames:
            piece = Piece(self.current, self.next,
                          min(self.job.frames, self.next + self.length(batch)), batch)
            self.next, self.running = piece.stop, self.running + 1
            return Batch((self.job,), piece)
        if self.running == 0:
            self.released = True
            return Batch((self.job,))
        return None

    def done(self, ok: bool) -> None:
        """A piece finished (`ok`) or failed: the next pass opens when this one is whole."""
        self.running -= 1
        self.cut_short = self.cut_short or not ok
        if self.running == 0 and self.next >= self.job.frames and self.current < self.passes:
            self.current, self.next = self.current + 1, 0

    def pieces(self, batch: int) -> int:
        """Pieces in one pass at `batch` frames a batch (how many workers it can keep busy)."""
        return -(-self.job.frames // self.length(batch))
