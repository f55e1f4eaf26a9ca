"""What this machine is, as the probes' cached answers are keyed: a measured default holds
for one CPU model, not for every machine sharing a cache; and where such an answer is kept."""

from __future__ import annotations

import hashlib
import json
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def median_seconds(calls: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    """Median seconds of each call, after one untimed call each (a first call sets up its
    kernels), the calls taking turns: a drifting machine slows them alike."""
    for call in calls.values():
        call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    return {name: sorted(t)[len(t) // 2] for name, t in times.items()}


def probe_entry(root: Path, kind: str, identity: list[Any]) -> Path:
    """The cache's probes/ file of one measured answer, named by everything it depends on."""
    digest = hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:16]
    return root / "probes" / f"{kind}-{digest}.json"


def remembered(entry: Path, measure: Callable[[], T], decode: Callable[[Any], T],
               encode: Callable[[T], Any]) -> tuple[T, bool]:
    """(the answer kept in `entry`, False), or (`measure()`'s, True), written there first. The
    processes of one machine take turns on a lock, so only one measures and none is timed
    while another does. A damaged entry is measured again, not trusted."""
    from filelock import FileLock

    from ..io.files import atomic_write_bytes
    from ..io.mirror import fetch_missing

    entry.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(entry) + ".lock", timeout=600):
        fetch_missing(entry)  # a cache in object storage: a machine like this one measured
        try:
            return decode(json.loads(entry.read_text())), False
        except (OSError, ValueError, TypeError):
            pass  # none yet, or unreadable: measure again
        answer = measure()
        atomic_write_bytes(entry, json.dumps(encode(answer)).encode())
    return answer, True
