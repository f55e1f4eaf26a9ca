"""How a manifest is run (RunOptions): the options of `pipeline run`, declared without
importing torch, so that `--help`, `status` and `report` start light."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..accel.options import RuntimeOptions
from ..errors import InputError
from ..gatys.trace import TRACE_EVERY, TRACE_EVERY_HELP
from ..io.storage import location
from ..options import check, option, typed_again
from .again import Again

DISTRIBUTORS = ("local", "ray")  # distributors/


@dataclass(frozen=True)
class RunOptions:
    """How a manifest is run. Each field is one option of `pipeline run` (options.py); the
    manifest's own parameters come from its rows and `overrides` (--set)."""

    # A str for the command line (a Path would fold a URL's //); a local one becomes a Path.
    out_dir: str = option(..., "Output folder: images, ledger/, checkpoints, run.json. "
                               "Rerunning on it resumes. A URL in object storage "
                               "(s3://bucket/out) works in a local copy of it, each file "
                               "uploaded as it is written.", flags=("--out",))
    distributor: str = option("local", "Where workers run: local (one process per device of "
                                       "this machine) or ray (one actor per GPU of every node "
                                       "of a Ray cluster, or per CPU worker on nodes without "
                                       "GPUs; needs the ray extra and a run folder every node "
                                       "mounts at the same path).", choices=DISTRIBUTORS)
    ray_address: str | None = option(None, "--distributor ray: the cluster to join, e.g. "
                                           "10.0.0.1:6379.  [default: $RAY_ADDRESS, else a Ray "
                                           "started on this machine]")
    devices: str = option("auto", "--distributor local: auto (every GPU, else the CPU), or a "
                                  "list such as cuda:0,cuda:1 or cpu. One worker process per "
                                  "device.")
    workers: int = option(0, "CPU workers per machine (on machines without GPUs), each with an "
                             "equal share of the cores, at most one per core. 0 = 2 where the "
                             "machine has 2+ cores and two of the largest jobs fit 4 x 512x384 "
                             "px together, else 1.",
                          lo=0)
    batch_size: int = option(0, "Jobs optimized together (same size and parameters). 0 = per "
                                "device: on CUDA 8 up to 512x384 px, else 1; on the CPU up to "
                                "4 images per worker, 4 x 512x384 px in all over the CPU "
                                "workers (1 at 1024 px).", lo=0)
    continuous: bool = option(True, "Continuous batching: a job that ends (early stopping, a "
                                    "failure) hands its place in the batch to the next job at "
                                    "once, and each job is checkpointed on its own, resuming "
                                    "in any batch. Images made in one stage with lbfgs; "
                                    "--no-continuous: fixed batches, checkpointed and resumed "
                                    "whole (the jobs a run in slots checkpointed still resume "
                                    "in slots).")
    checkpoint_every: int = option(50, "Checkpoint each job (or fixed batch) every N iterations, "
                                       "within --checkpoint-budget (0: only when stopped).",
                                   lo=0)
    checkpoint_budget: float = option(0.05, "The largest share of a batch's time that its "
                                            "periodic checkpoints may take: one that falls "
                                            "due beyond it is left out (a checkpoint holds the "
                                            "job's whole L-BFGS history, 118 MB at 256x192; "
                                            "a fast GPU would spend most of its time writing "
                                            "them). 1 = every one, 0 = none. Checkpoints when "
                                            "the run stops are always written.", lo=0, hi=1)
    trace_every: int = option(TRACE_EVERY, TRACE_EVERY_HELP + " Kept in --out/traces/ as "
                                                            "Parquet, by job key.", lo=0)
    skip_bad_rows: bool = option(False, "Record invalid rows as failed and run the rest, "
                                        "instead of refusing to start (each named in a "
                                        "warning line first).")
    retry_failed: bool = option(False, "Run jobs that failed in an earlier run again (they are "
                                       "skipped otherwise).")
    overrides: dict[str, Any] = field(default_factory=dict)  # --set: column defaults
    runtime: RuntimeOptions = field(default_factory=RuntimeOptions)
    # The options a command resuming the run repeats, kept in run.json for `pipeline status`:
    # the command line's (with its --no-report, -q and storage options); None: `typed()`.
    again: Again | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "out_dir", location(self.out_dir))

    def typed(self) -> list[str]:
        """These options but --out as the command line spells them (those not at their
        defaults): what a command resuming the run repeats, also for a run started from
        Python."""
        return typed_again(self, self.runtime, but=("out_dir",))

    def validate(self) -> None:
        """InputError naming the first bad option, before anything is read or written (the
        devices and the cluster are checked by the distributor, distributors/)."""
        check(self)
        self.runtime.validate()
        if self.distributor != "local" and self.devices != "auto":
            raise InputError(f"--devices is for --distributor local; --distributor "
                             f"{self.distributor} uses every GPU of every node (else --workers "
                             "CPU workers per node)")
