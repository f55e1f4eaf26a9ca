"""--precision auto on the CPU: decided by a measured probe, cached per machine, never by a
CPU's name alone; no test here depends on this machine's speed."""

import pytest

from pipeline.accel import precision_probe
from pipeline.accel.precision_probe import Choice, choose_cpu_precision, decide, measure


def test_bf16_only_where_it_measures_clearly_faster():
    assert decide(["AVX512-BF16"], lambda: {"fp32": 0.16, "bf16": 0.08}).precision == "bf16"
    assert decide(["AMX"], lambda: {"fp32": 0.10, "bf16": 0.098}).precision == "fp32"
    slower = decide(["AMX"], lambda: {"fp32": 0.10, "bf16": 0.2})
    assert slower.precision == "fp32" and "0.50x" in slower.reason


def test_no_native_bf16_means_fp32_without_probing(tmp_path, monkeypatch):
    monkeypatch.setattr(precision_probe, "native_bf16", lambda: [])
    choice = choose_cpu_precision(tmp_path, lambda: pytest.fail("probed"))
    assert choice == Choice("fp32", "auto: this CPU has no native bf16 (AVX512-BF16 or AMX)")


def test_the_choice_is_probed_once_per_machine_and_cached(tmp_path, monkeypatch):
    monkeypatch.setattr(precision_probe, "native_bf16", lambda: ["AVX512-BF16"])
    first = choose_cpu_precision(tmp_path, lambda: {"fp32": 0.2, "bf16": 0.1})
    assert first.precision == "bf16" and "2.00x" in first.reason
    assert choose_cpu_precision(tmp_path, lambda: pytest.fail("probed again")) == first
    (entry,) = (tmp_path / "probes").glob("precision-*.json")
    entry.write_text("{garbage")  # a damaged entry is probed again, not trusted
    again = choose_cpu_precision(tmp_path, lambda: {"fp32": 0.1, "bf16": 0.1})
    assert again.precision == "fp32"


def test_the_real_probe_times_both_paths():
    seconds = measure(size=(48, 32))
    assert set(seconds) == {"fp32", "bf16"} and all(s > 0 for s in seconds.values())
