"""Which factor L-BFGS's history is in its products: measured per machine and cached; both
sides give the same directions (tests/test_lbfgs.py), so no test depends on which one wins."""

import pytest

from pipeline.accel.history_probe import history_left, measure
from pipeline.accel.runtime import Runtime


def test_the_right_factor_only_where_it_measures_clearly_faster(tmp_path):
    assert not history_left(tmp_path / "a", lambda: {"left": 0.030, "right": 0.010})
    assert history_left(tmp_path / "b", lambda: {"left": 0.0105, "right": 0.010})  # a tie
    assert history_left(tmp_path / "c", lambda: {"left": 0.010, "right": 0.030})


def test_the_side_is_probed_once_per_machine_and_cached(tmp_path):
    assert not history_left(tmp_path, lambda: {"left": 0.03, "right": 0.01})
    assert not history_left(tmp_path, lambda: pytest.fail("probed again"))
    (entry,) = (tmp_path / "probes").glob("history-*.json")
    assert entry.read_text() == '"right"'
    entry.write_text('"up"')  # a damaged entry is probed again, not trusted
    assert history_left(tmp_path, lambda: {"left": 0.01, "right": 0.01})
    assert entry.read_text() == '"left"'


def test_a_cpu_runtime_takes_the_cached_side(tmp_path):
    assert not history_left(tmp_path, lambda: {"left": 0.03, "right": 0.01})
    assert not Runtime.create("cpu", "fp32", cache=str(tmp_path)).history_left
    (entry,) = (tmp_path / "probes").glob("history-*.json")
    entry.write_text('"left"')
    assert Runtime.create("cpu", "fp32", cache=str(tmp_path)).history_left


def test_the_real_probe_times_both_sides():
    seconds = measure()
    assert set(seconds) == {"left", "right"} and all(s > 0 for s in seconds.values())
