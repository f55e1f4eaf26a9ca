import torch

from pipeline.bulk import checkpoint
from pipeline.bulk.checkpoint import load_checkpoint, save_checkpoint


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
    a due one is written only once the writes so far (and the next, counted at the last one's
    time) fit in 5% of the time since the saver was made. One written because the run stops
    always is; at a budget of 1, every one is."""
    now = [0.0]
    written: list[float] = []

    def write(path, keys, iteration, images, state):
        written.append(now[0])
        now[0] += 1.0

    monkeypatch.setattr(checkpoint, "save_checkpoint", write)
    stopping = [False]
    saver = checkpoint.CheckpointSaver(0.05, lambda: stopping[0], clock=lambda: now[0])
    save = saver.saving(tmp_path / "job.pt", ["k"])
    for _ in range(40):
        save(0, torch.zeros(1), {})
        now[0] += 1.0
    assert written[:2] == [0.0, 40.0]  # 2 s spent: the next once 40 s have passed
    assert saver.spent <= 0.05 * (now[0] - saver.born) + 1.0  # one write's slack at most
    stopping[0] = True
    save(0, torch.zeros(1), {})
    assert written[-1] == now[0] - 1.0  # the stop's checkpoint, over budget or not
    for budget, count in ((1.0, 5), (0.0, 0)):  # every one; none
        before = len(written)
        save = checkpoint.CheckpointSaver(budget, clock=lambda: now[0]).saving(tmp_path / "b", [])
        for _ in range(5):
            now[0] += 1.0
            save(0, torch.zeros(1), {})
        assert len(written) == before + count
