import json
import subprocess
import sys
from pathlib import Path

import torch

from pipeline.bulk import checkpoint
from pipeline.bulk.checkpoint import load_checkpoint, save_checkpoint
from pipeline.bulk.checkpoint_files import checkpoint_dir, checkpoint_path, job_checkpoint_path


def test_checkpoint_round_trips_and_a_foreign_format_is_dropped(tmp_path):
    path = tmp_path / "b.pt"
    images, state = torch.rand(1, 3, 4, 4), {"n_iter": 3, "pairs": torch.rand(1, 2, 2, 48)}
    save_checkpoint(path, ["k"], 3, images, state)
    iteration, loaded, opt = load_checkpoint(path, ["k"])
    assert iteration == 3 and torch.equal(loaded, images)
    assert torch.equal(opt["pairs"], state["pairs"])
    assert load_checkpoint(path, ["other"]) is None and not path.exists()
    # An older layout (before the "format" field) with matching keys: start over, not crash.
    torch.save({"keys": ["k"], "iteration": 3, "images": images,
                "optimizer": {"s": [], "y": []}}, path)
    assert load_checkpoint(path, ["k"]) is None and not path.exists()


def test_periodic_checkpoints_keep_within_their_share_of_the_time(tmp_path, monkeypatch):
    """Each write takes 1 s of a fake clock, and one falls due every second: at a budget of 5%,
    a due one is wanted only once the writes so far (and the next, counted at the last one's
    time) fit in 5% of the time since the saver was made. At a budget of 1 every one is, at 0
    none; a save asked for anyway (the run stops) is written."""
    now = [0.0]
    written: list[float] = []

    def write(path, keys, iteration, images, state):
        written.append(now[0])
        now[0] += 1.0

    monkeypatch.setattr(checkpoint, "save_checkpoint", write)
    saver = checkpoint.CheckpointSaver(0.05, clock=lambda: now[0])
    save = saver.saving(tmp_path / "job.pt", ["k"])
    for _ in range(40):
        if saver.wants_periodic():
            save(0, torch.zeros(1), {})
        now[0] += 1.0
    assert written[:2] == [0.0, 40.0]  # 2 s spent: the next once 40 s have passed
    assert saver.spent <= 0.05 * (now[0] - saver.born) + 1.0  # one write's slack at most
    assert not saver.wants_periodic()
    save(0, torch.zeros(1), {})  # the run stops: written over budget
    assert written[-1] == now[0] - 1.0 and saver.spent == len(written)
    for budget, wanted in ((1.0, True), (0.0, False)):
        other = checkpoint.CheckpointSaver(budget, clock=lambda: now[0])
        assert [other.wants_periodic() for _ in range(3)] == [wanted] * 3


# In a fresh interpreter: what a run folder's checkpoints are for, and whether torch was loaded.
PEEK = """
import json, sys
from pathlib import Path
from pipeline.bulk.checkpoint_files import checkpointed
print(json.dumps([checkpointed(Path(sys.argv[1])), "torch" in sys.modules]))
"""


def test_what_checkpoints_are_for_is_read_without_torch(tmp_path):
    """`pipeline status` counts what a rerun resumes, so it reads each checkpoint's job keys and
    iteration, and nothing else, without torch: a job's own, a batch's, one of another format
    and a foreign file."""
    folder = checkpoint_dir(tmp_path)
    history = {"pairs": [torch.rand(2, 3, 8, 8).bfloat16() for _ in range(3)], "n": 4}
    save_checkpoint(job_checkpoint_path(tmp_path, "a"), ["a"], 37, torch.rand(1, 3, 8, 8),
                    history)
    save_checkpoint(checkpoint_path(tmp_path, "batch"), ["b", "c"], 12, torch.rand(2, 3, 8, 8),
                    history)
    torch.save({"format": 1, "keys": ["d"], "iteration": 5}, folder / "old.pt")
    (folder / "torn.pt").write_bytes(b"PK\x03\x04 torn")
    torch.save({"keys": ["e"], "iteration": 5, "call": print}, folder / "foreign.pt")
    out = subprocess.run([sys.executable, "-c", PEEK, str(tmp_path)], capture_output=True,
                         text=True, check=True, cwd=Path(__file__).parents[1])
    assert json.loads(out.stdout) == [{"a": 37, "b": 12, "c": 12}, False]
