"""The Ray distributor: one actor per GPU of every node of a Ray cluster, or per CPU worker
slot on nodes without GPUs, fed by the same run loop as local workers (distribute.py).

Contract: every node has this package installed, and the run folder is either on storage
every node mounts at the same path (NFS or any POSIX mount) or in object storage (--out
s3://...), where each node works in its own copy and every file written there is uploaded
(io/mirror.py). Workers read inputs and write outputs, checkpoints and ledger parts there;
only small events and batch descriptions travel through Ray. So a batch whose node dies is
handed to another actor and resumes from the checkpoint its first worker left in the run
folder (or in the bucket).
"""

from __future__ import annotations

import gc
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

from ...errors import InputError
from ...io import mirror
from ...io.files import atomic_write_bytes
from ..checkpoint_files import checkpoint_dir, discard
from ..distribute import Slot
from ..events import Event, Exited, Iteration, Lost
from ..jobs import Batch
from ..worker import Worker, WorkerConfig, forward_logs, start_worker
from . import cpu_workers

try:
    import ray
    from ray.exceptions import RayError
    from ray.util.queue import Queue
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
except ImportError as e:  # the optional extra
    raise InputError('--distributor ray needs Ray: pip install -e ".[ray]" (with the cpu or '
                     'gpu extra)') from e

# An actor reports its iteration at most this often: each report is a call to the driver.
ITERATION_EVERY_S = 0.5
# A stop is looked for as often as the lookups take at most a 50th of a worker's time, and at
# least once a second: each iteration in a local folder, about once a second in a bucket (a
# HEAD). A job can otherwise end between the stop and its worker's next look, unsaved.
STOP_LOOK_EVERY_S = 1.0
STOP_LOOK_SHARE = 50
PROBE_TIMEOUT_S = 5.0
# Ray's settings (RAY_<name>, read when it connects) that bound joining a cluster to about
# 15 s where it would retry for minutes, and keep its C++ connection warnings off stderr; a
# user's own values win.
CONNECT_BOUNDS = {"RAY_py_gcs_connect_timeout_s": "5", "RAY_gcs_server_port_wait_time_s": "1",
                  "RAY_gcs_rpc_server_connect_timeout_s": "3", "RAY_BACKEND_LOG_LEVEL": "error"}


def stop_file(out_dir: Path, run_id: str) -> Path:
    """Present: every worker of this run checkpoints and leaves. A file in the run folder (in
    object storage: in the bucket) rather than an actor call: a call could only be heard by a
    second thread, and a threaded actor measured slower per iteration than one that runs on
    its main thread."""
    return checkpoint_dir(out_dir) / f"stop-{run_id}"


def join(address: str | None) -> None:
    """ray.init, bounded: an address where nothing listens is refused at once, one where
    something else listens within CONNECT_TIMEOUT_S (Ray alone retries for minutes), each in
    one line; Ray's own connection warnings are not printed."""
    address = address or os.environ.get("RAY_ADDRESS")
    if address not in (None, "auto", "local"):
        host, _, port = address.removeprefix("ray://").rpartition(":")
        try:
            socket.create_connection((host.strip("[]"), int(port)), timeout=PROBE_TIMEOUT_S
                                     ).close()
        except (OSError, ValueError) as e:
            reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            raise InputError(f"cannot connect to Ray at {address}: {reason or 'timed out'}"
                             ) from None
        for name, value in CONNECT_BOUNDS.items():  # not for a Ray started here: its own
            os.environ.setdefault(name, value)      # GCS may take longer to come up
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False,
                 logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise InputError(f"cannot connect to Ray at {address or 'a new local Ray'}: "
                         f"{str(e).splitlines()[0]}") from None


class RayWorker:
    """A worker as a Ray actor."""

    def __init__(self, wid: int, threads: int, config: WorkerConfig, events: Queue):
        gc.freeze()  # what the imports made is no garbage: the actor's collections skip it
        self.wid, self.threads, self.config, self.events = wid, threads, config, events
        self.worker: Worker | None = None
        self.last_iteration = 0.0
        self.stop_file: Path | None = None  # in this node's copy of the run folder
        self.next_look, self.stopped = 0.0, False

    def emit(self, event: Event) -> None:
        if isinstance(event, Iteration):
            now = time.monotonic()
            if now - self.last_iteration < ITERATION_EVERY_S:
                return
            self.last_iteration = now
        self.events.put(event)

    def stopping(self) -> bool:
        """Looked up as often as its cost allows: in a bucket a lookup is a round trip."""
        now = time.monotonic()
        if not self.stopped and self.stop_file is not None and now >= self.next_look:
            self.stopped = mirror.exists(self.stop_file)
            cost = time.monotonic() - now
            self.next_look = now + min(STOP_LOOK_EVERY_S, STOP_LOOK_SHARE * cost)
        return self.stopped

    def start(self) -> bool:
        # Ray hides all but the assigned GPU (CUDA_VISIBLE_DEVICES): it is cuda:0 here.
        device = "cuda:0" if ray.get_gpu_ids() else "cpu"
        forward_logs(self.wid, self.emit)
        self.worker = start_worker(self.wid, device, self.threads, self.config, self.emit,
                                   self.stopping)
        if self.worker is None:
            return False
        self.stop_file = stop_file(self.worker.out_dir, self.config.run_id)
        return True

    def run(self, batch: Batch) -> bool:
        assert self.worker is not None, "run before a successful start"
        return self.worker.serve(batch)


RemoteWorker = ray.remote(RayWorker)


class RayDistributor:
    def __init__(self, address: str | None, config: WorkerConfig, workers: int,
                 sizes: list[tuple[int, int]]):
        """`address`: a running cluster's (None: RAY_ADDRESS, else start Ray on this
        machine). `workers`: CPU workers per node without GPUs (0: as a local run picks)."""
        self.config = config
        for stale in checkpoint_dir(config.out_dir).glob("stop-*"):  # of a run that was killed
            discard(stale)
        self._owns_ray = not ray.is_initialized()
        if self._owns_ray:
            join(address)
        self.slots: list[Slot] = []
        self._placement: list[dict[str, Any]] = []  # per wid: node id, num_cpus, num_gpus
        for node in sorted(ray.nodes(), key=lambda n: n["NodeID"]):
            if not node["Alive"]:
                continue
            gpus, cpus = int(node["Resources"].get("GPU", 0)), int(node["Resources"].get(
                "CPU", 0))
            name = f"node {node['NodeID'][:6]}"
            if gpus:
                per = {"num_gpus": 1, "num_cpus": 1 if cpus >= gpus else 0}
                self._add(node, [Slot("cuda", f"{name} cuda", 1)] * gpus, per)
            elif cpus:
                k = cpu_workers(workers, cpus, sizes, name)
                per = {"num_gpus": 0, "num_cpus": cpus // k}
                self._add(node, [Slot("cpu", f"{name} cpu", cpus // k, k)] * k, per)
        if not self.slots:
            self.close()
            raise InputError("the Ray cluster has no node with a CPU or GPU for workers")
        here = ray.get_runtime_context().get_node_id()
        self._events = Queue(actor_options={"num_cpus": 0, "scheduling_strategy":
                                            NodeAffinitySchedulingStrategy(here, soft=False)})
        self._actors: dict[int, Any] = {}
        self._refs: dict[Any, int] = {}
        self._said: list[Event] = []

    def _add(self, node: dict[str, Any], slots: list[Slot], per: dict[str, Any]) -> None:
        self.slots += slots
        self._placement += [{"node": node["NodeID"], **per}] * len(slots)

    def start(self, wid: int) -> None:
        place = self._placement[wid]
        actor = RemoteWorker.options(
            num_cpus=place["num_cpus"], num_gpus=place["num_gpus"],
            scheduling_strategy=NodeAffinitySchedulingStrategy(place["node"], soft=False),
        ).remote(wid, self.slots[wid].threads, self.config, self._events)
        self._actors[wid] = actor
        self._refs[actor.start.remote()] = wid

    def send(self, wid: int, batch: Batch | None) -> None:
        if batch is None:
            self._said.append(Exited(wid))
            if (actor := self._actors.pop(wid, None)) is not None:
                ray.kill(actor)  # its CPUs or GPU go back to the cluster
        else:
            self._refs[self._actors[wid].run.remote(batch)] = wid

    def _drain(self) -> list[Event]:
        n = self._events.qsize()
        return list(self._events.get_nowait_batch(n)) if n else []

    def events(self, timeout: float) -> list[Event]:
        found = self._drain() + self._said
        self._said = []
        refs = list(self._refs)
        if refs and not found:
            ray.wait(refs, num_returns=1, timeout=timeout)
        elif not found:
            time.sleep(timeout)
        done, _ = ray.wait(refs, num_returns=len(refs), timeout=0) if refs else ([], [])
        found += self._drain()  # what a worker said before its call returned comes first
        for ref in done:
            if (wid := self._refs.pop(ref, None)) is None:  # its worker was already lost
                continue
            try:
                ray.get(ref)
            except RayError as e:  # the actor or its node died, or the call itself failed
                # Its other calls (the next batch may be queued already) die with it: one
                # Lost, never one for the worker started in its place.
                self._refs = {r: w for r, w in self._refs.items() if w != wid}
                self._actors.pop(wid, None)
                found.append(Lost(wid, str(e).strip().splitlines()[0][:200]))
        return found

    def restartable(self, wid: int) -> bool:
        node = self._placement[wid]["node"]
        return any(n["NodeID"] == node and n["Alive"] for n in ray.nodes())

    def stop(self) -> None:
        atomic_write_bytes(stop_file(self.config.out_dir, self.config.run_id), b"")

    def kill(self) -> None:
        for actor in self._actors.values():
            ray.kill(actor)
        self._actors.clear()

    def close(self) -> None:
        if hasattr(self, "_actors"):
            self.kill()
            self._events.shutdown()
        discard(stop_file(self.config.out_dir, self.config.run_id))
        if self._owns_ray:
            ray.shutdown()
