import torch

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
