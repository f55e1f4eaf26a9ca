"""The run loop (distribute.py) over fake distributors: scheduling, recovery and stopping
decided once for every distributor."""

from __future__ import annotations

from pipeline.bulk.distribute import MAX_WORKER_DEATHS, Slot, distribute
from pipeline.bulk.events import BatchDone, BatchStarted, Exited, Lost, Ready
from pipeline.bulk.jobs import Batch, Inspector
from pipeline.bulk.manifest import read_jobs
from pipeline.bulk.queue import BatchQueue


class Display:
    def __init__(self):
        self.events, self.restarted = [], []

    def handle(self, event):
        self.events.append(event)

    def worker_restarted(self, wid):
        self.restarted.append(wid)

    def interrupted(self):
        pass

    def aborted(self):
        pass


class Fake:
    """Workers that say Ready when started and do with a batch what `outcome(wid, batch)`
    says: "done" (BatchDone), "die" (Lost), after `delay[wid]` polls."""

    def __init__(self, n, outcome, delay=None, restartable=True, no_start=()):
        self.slots = [Slot("cpu", "cpu", 1)] * n
        self.no_start = set(no_start)  # these die before they are ready
        self.outcome, self.delay, self.can_restart = outcome, delay or {}, restartable
        self.started, self.ran, self.polls, self.later = [], [], 0, []

    def _say(self, wid, event):
        self.later.append((self.polls + self.delay.get(wid, 0), event))

    def start(self, wid):
        self.started.append(wid)
        if wid in self.no_start:
            self._say(wid, Lost(wid, "exit code 1"))
        else:
            self._say(wid, Ready(wid, "cpu", "fp32", "test"))

    def send(self, wid, batch):
        if batch is None:
            self._say(wid, Exited(wid))
        elif self.outcome(wid, batch) == "die":
            self._say(wid, Lost(wid, "killed by signal 9"))
        else:
            self.ran.append((wid, batch))
            self._say(wid, BatchStarted(wid, len(batch.jobs), 10, 0))
            self._say(wid, BatchDone(wid, len(batch.jobs), []))

    def events(self, timeout):
        self.polls += 1
        due = [e for t, e in self.later if t < self.polls]
        self.later = [(t, e) for t, e in self.later if t >= self.polls]
        return due

    def restartable(self, wid):
        return self.can_restart

    def stop(self):
        pass

    def kill(self):
        pass

    def close(self):
        pass


def _jobs(dataset, tmp_path):
    return [Inspector(decode=False)(j) for j in read_jobs(dataset, tmp_path / "out", {})]


def test_a_batch_that_keeps_killing_its_worker_is_left_pending(dataset, tmp_path):
    jobs = _jobs(dataset, tmp_path)[:1]
    workers = Fake(1, lambda wid, batch: "die")
    display = Display()
    outcome = distribute(workers, BatchQueue(jobs), 1, display, lambda batch: False)
    assert workers.started == [0] * MAX_WORKER_DEATHS  # restarted until the last death
    assert display.restarted == [0] * (MAX_WORKER_DEATHS - 1)
    assert outcome.done == 0 and "left pending" in outcome.errors[0]
    assert "killed by signal 9" in outcome.errors[0]


def test_a_lost_workers_batch_goes_to_a_worker_that_was_waiting(dataset, tmp_path):
    """Worker 0's machine is gone (no restart); worker 1 has finished everything else and
    waits, so it takes the batch worker 0 lost. Every job is done exactly once."""
    jobs = _jobs(dataset, tmp_path)
    first = []

    def outcome(wid, batch):
        if wid == 0 and not first:
            first.append(batch)
            return "die"
        return "done"

    workers = Fake(2, outcome, delay={0: 5}, restartable=False)
    display = Display()
    result = distribute(workers, BatchQueue(jobs, continuous=False), 1, display,
                        lambda batch: False)
    assert result.done == len(jobs) and not result.errors
    assert (1, first[0]) in workers.ran  # worker 1 ran worker 0's batch
    ran = [job for _, batch in workers.ran for job in batch.jobs]
    assert sorted(j.id for j in ran) == sorted(j.id for j in jobs)  # each once
    assert workers.started == [0, 1]
    assert any(isinstance(e, Lost) for e in display.events)


def test_a_batch_whose_outputs_were_written_is_not_run_again(dataset, tmp_path):
    jobs = _jobs(dataset, tmp_path)[:2]
    workers = Fake(1, lambda wid, batch: "die")
    result = distribute(workers, BatchQueue(jobs), 2, Display(), lambda batch: True)
    assert result.done == 2 and not result.errors
    assert workers.started == [0]  # nothing left to restart for


def test_workers_with_different_batch_sizes_cut_their_own(dataset, tmp_path):
    jobs = [j for j in _jobs(dataset, tmp_path)]
    same = [j for j in jobs if j.group == jobs[0].group]
    queue = BatchQueue(same, continuous=False)
    big = queue.take(lambda job: 8)
    assert big is not None and len(big.jobs) == len(same) and not big.slots
    queue = BatchQueue(same, continuous=False)
    assert len(queue.take(lambda job: 1).jobs) == 1
    assert queue.count(lambda job: 1) == len(same) - 1


def test_a_batch_handed_back_waits_for_a_worker_it_fits_while_there_is_other_work(dataset,
                                                                                  tmp_path):
    """A GPU worker's batch of 4, handed back when it died, is not taken by a CPU worker of
    batch size 1 while that one has other jobs to run; once nothing else is left it is."""
    jobs = _jobs(dataset, tmp_path)
    big = [j for j in jobs if j.group == jobs[0].group]
    other = [j for j in jobs if j.group != jobs[0].group]
    queue = BatchQueue(other, continuous=False)
    queue.put_back(Batch(tuple(big)))
    small = [queue.take(lambda job: 1) for _ in other]
    assert [b.jobs for b in small] == [(j,) for j in other]
    last = queue.take(lambda job: 1)
    assert last is not None and last.jobs == tuple(big) and not queue
    queue = BatchQueue(other, continuous=False)
    queue.put_back(Batch(tuple(big)))
    first = queue.take(lambda job: 4)
    assert first is not None and first.jobs == tuple(big)


def test_a_run_of_slots_handed_back_goes_to_the_next_worker_cut_to_its_size(dataset, tmp_path):
    """A dead GPU worker's run of 4 slots over many jobs: its jobs resume from their own
    checkpoints in any rows, so the next worker takes it at once, in its own slots and run
    length, and the rest goes to the worker after it, before any new batch."""
    from pipeline.bulk.queue import RUN_SLOTS

    jobs = _jobs(dataset, tmp_path)
    same = [j for j in jobs if j.group == jobs[0].group]
    other = [j for j in jobs if j.group != jobs[0].group]
    run = tuple(same * 3)
    queue = BatchQueue(other, continuous=True)
    queue.put_back(Batch(run, slots=4))
    first = queue.take(lambda job: 1)
    assert first is not None and (first.jobs, first.slots) == (run[:RUN_SLOTS], 1)
    rest = queue.take(lambda job: 2)
    assert rest is not None and (rest.jobs, rest.slots) == (run[RUN_SLOTS:], 2)
    after = queue.take(lambda job: 4)
    assert after is not None and set(after.jobs) <= set(other)


def test_without_continuous_batching_jobs_with_their_own_checkpoints_still_go_through_slots(
        dataset, tmp_path):
    """--no-continuous after a run in slots: a fixed batch steps its jobs from one iteration,
    so the jobs checkpointed on their own go out in slots (first, cut to the worker's batch
    size), each resuming from its checkpoint; the others in fixed batches. Counted as batches
    of the worker's size, so a run keeps a worker for each."""
    jobs = _jobs(dataset, tmp_path)
    same = [j for j in jobs if j.group == jobs[0].group]
    assert len(same) == 4
    queue = BatchQueue(same, workers=2, continuous=False,
                       own={j.key: 5 for j in same[:3]})
    assert queue.count(lambda job: 1) == 4 and queue.count(lambda job: 2) == 3
    first = queue.take(lambda job: 2)
    assert first is not None and (first.jobs, first.slots) == (tuple(same[:3]), 2)
    last = queue.take(lambda job: 2)
    assert last is not None and (last.jobs, last.slots) == ((same[3],), 0) and not queue


def test_jobs_in_slots_go_out_as_each_workers_share_of_their_group(dataset, tmp_path):
    """Continuous batching: a worker's batch is its share of the group (at most RUN_SLOTS
    times its batch size, at least one batch), to run through batch-size slots."""
    from pipeline.bulk.queue import RUN_SLOTS

    jobs = _jobs(dataset, tmp_path)
    same = [j for j in jobs if j.group == jobs[0].group]
    assert len(same) == 4
    queue = BatchQueue(same, workers=2)
    first = queue.take(lambda job: 1)
    assert first is not None and (len(first.jobs), first.slots) == (2, 1)
    queue = BatchQueue(same, workers=1)
    whole = queue.take(lambda job: 3)
    assert whole is not None and (len(whole.jobs), whole.slots) == (4, 3) and not queue
    queue = BatchQueue(same * 10, workers=1)
    capped = queue.take(lambda job: 2)
    assert capped is not None and (len(capped.jobs), capped.slots) == (2 * RUN_SLOTS, 2)


def test_the_last_jobs_are_shared_out_in_proportion_to_the_workers_batch_sizes(dataset,
                                                                              tmp_path):
    """Fewer jobs left than fill every worker's batch: each worker that asks takes its part,
    so none idles while another runs a whole batch of the last ones; a worker's part of a
    group is in proportion to its batch size among all the workers' (`capacity`)."""
    jobs = _jobs(dataset, tmp_path)
    same = [j for j in jobs if j.group == jobs[0].group]
    assert len(same) == 4
    for continuous in (True, False):
        queue = BatchQueue(same, workers=2, continuous=continuous)
        first = queue.take(lambda job: 4)
        second = queue.take(lambda job: 4, running=len(first.jobs))  # the first's still run
        assert [len(b.jobs) for b in (first, second)] == [2, 2] and not queue, continuous
        assert [b.slots for b in (first, second)] == ([2, 2] if continuous else [0, 0])
    queue = BatchQueue(same, workers=8)  # fewer jobs than workers: one each
    assert [len(queue.take(lambda job: 8, running=i).jobs) for i in range(4)] == [1] * 4
    queue = BatchQueue(same * 3, workers=2)  # a GPU at batch 8 beside a CPU worker at 1
    gpu = queue.take(lambda job: 8, lambda job: 9)
    assert gpu is not None and (len(gpu.jobs), gpu.slots) == (11, 8)
    cpu = queue.take(lambda job: 1, lambda job: 9)
    assert cpu is not None and (len(cpu.jobs), cpu.slots) == (1, 1) and not queue
    queue = BatchQueue(same * 8, workers=2)  # enough left: whole batches, as before
    first = queue.take(lambda job: 4)
    assert first is not None and (len(first.jobs), first.slots) == (16, 4)


def test_a_worker_that_cannot_see_the_run_folder_says_so_and_does_not_start(tmp_path):
    from pipeline.accel.runtime import RuntimeOptions
    from pipeline.bulk.events import CouldNotStart
    from pipeline.bulk.run_state import write_run_info
    from pipeline.bulk.worker import WorkerConfig, start_worker

    said = []
    config = WorkerConfig(tmp_path / "elsewhere", 0, RuntimeOptions(precision="fp32"), "abc")
    assert start_worker(0, "cpu", 1, config, said.append, lambda: False) is None
    assert isinstance(said[-1], CouldNotStart)
    assert "cannot see the run folder" in said[-1].message and "same path" in said[-1].message
    (tmp_path / "elsewhere").mkdir()
    for run_id in ("another run", "abc"):
        write_run_info(tmp_path / "elsewhere", run_id, tmp_path / "m.parquet", [], {}, {})
        if run_id != "abc":
            assert start_worker(0, "cpu", 1, config, said.append, lambda: False) is None
    worker = start_worker(0, "cpu", 1, config, said.append, lambda: False)
    assert worker is not None and isinstance(said[-1], Ready)


def test_a_waiting_worker_that_dies_is_not_sent_anything_more(dataset, tmp_path):
    """Worker 1 waits for work while worker 0 runs the last batch, then worker 1 dies."""
    jobs = _jobs(dataset, tmp_path)[:1]
    workers = Fake(2, lambda wid, batch: "done", restartable=False)
    sent = []
    send = workers.send

    def record(wid, batch):
        sent.append((wid, batch))
        send(wid, batch)
        if wid == 0 and batch is not None:  # worker 0 works a while; worker 1, waiting, dies
            workers.later = [(t + 5, e) for t, e in workers.later]
            workers._say(1, Lost(1, "killed by signal 9"))

    workers.send = record
    result = distribute(workers, BatchQueue(jobs), 1, Display(), lambda batch: False)
    assert result.done == 1 and not result.errors
    assert all(wid == 0 for wid, _ in sent)  # nothing for the dead worker, not even None


def test_a_worker_that_dies_before_it_is_ready_is_not_started_again(dataset, tmp_path):
    jobs = _jobs(dataset, tmp_path)[:2]
    workers = Fake(2, lambda wid, batch: "done", no_start={1})
    result = distribute(workers, BatchQueue(jobs), 1, Display(), lambda batch: False)
    assert workers.started == [0, 1] and result.done == 2 and not result.errors
    workers = Fake(1, lambda wid, batch: "done", no_start={0})
    result = distribute(workers, BatchQueue(jobs), 1, Display(), lambda batch: False)
    assert workers.started == [0] and result.done == 0
    assert result.errors == ["a worker died before it was ready (exit code 1)"]


def _multi_pass_job(dataset, tmp_path, frames=8):
    import dataclasses

    from pipeline.bulk.jobs import Job
    from pipeline.video.params import VideoParams

    image = _jobs(dataset, tmp_path)[0]
    spec = dataclasses.replace(image.spec, video=VideoParams(passes=3))
    return Job(spec, "k", (32, 24), frames)


def test_a_multi_pass_video_goes_out_as_pieces_a_pass_after_the_other(dataset, tmp_path):
    """Pieces of whole batches, about two per worker and pass; no piece of a pass before the
    last of the one before is done; then the job itself. A failed piece: the job goes out
    whole once the pieces running are done."""
    job = _multi_pass_job(dataset, tmp_path)
    queue = BatchQueue([job], workers=2)
    assert queue.count(lambda j: 2) == 4
    for p in range(3):
        pieces = [queue.take(lambda j: 2) for _ in range(4)]
        assert [(b.piece.index, b.piece.first, b.piece.stop, b.piece.batch) for b in pieces] \
            == [(p, f, f + 2, 2) for f in range(0, 8, 2)]
        for piece in pieces:
            assert queue.take(lambda j: 2) is None and queue  # the pass is not whole yet
            queue.piece_done(piece, ok=True)
    last = queue.take(lambda j: 2)
    assert last.jobs == (job,) and last.piece is None
    assert queue.take(lambda j: 2) is None and not queue
    assert len(BatchQueue([job], workers=1).take(lambda j: 2).jobs) == 1  # one worker: whole

    queue = BatchQueue([job], workers=2)
    first, second = queue.take(lambda j: 3), queue.take(lambda j: 3)
    assert (first.piece.stop, second.piece.first, second.piece.stop) == (3, 3, 6)
    queue.piece_done(first, ok=False)
    assert queue.take(lambda j: 3) is None  # cut short: no more pieces, the second runs
    queue.piece_done(second, ok=True)
    assert queue.take(lambda j: 3).piece is None and not queue


def test_workers_waiting_on_a_pass_all_get_the_next_one(dataset, tmp_path):
    """Workers that found nothing to take while a pass finished are fed its next pass."""
    job = _multi_pass_job(dataset, tmp_path, frames=12)
    workers = Fake(3, lambda wid, batch: "done", delay={0: 1, 1: 2, 2: 6})
    result = distribute(workers, BatchQueue([job], workers=3), 2, Display(), lambda b: False)
    assert not result.errors and result.done == 3 * 6 + 1
    ran = [(wid, b.piece.index if b.piece else None) for wid, b in workers.ran]
    assert [p for _, p in ran] == [0] * 6 + [1] * 6 + [2] * 6 + [None]
    for p in range(3):
        assert {wid for wid, q in ran if q == p} == {0, 1, 2}, ran


def test_a_checkpointed_fixed_batch_is_formed_again_with_its_written_jobs(dataset, tmp_path):
    """A fixed batch steps its jobs together, so its checkpoint only resumes them together: a
    rerun forms it again at any batch size that holds it, a job written since riding along
    (kept, not written again), where that costs less than starting the others over."""
    jobs = _jobs(dataset, tmp_path)
    a, b, c, d = [j for j in jobs if j.group == jobs[0].group]
    half = a.spec.params.iterations // 2
    saved = [((b.key, a.key, c.key), half)]
    queue = BatchQueue([b, c, d], continuous=False, checkpointed=saved, written=[a])
    first = queue.take(lambda job: 4)
    assert first is not None and first.jobs == (b, a, c) and first.pending == (b, c)
    assert first.kept == {a.id} and not first.slots
    assert queue.count(lambda job: 4) == 1
    rest = queue.take(lambda job: 4)
    assert rest is not None and rest.jobs == (d,) and not queue
    # A job in two checkpoints (a run killed twice, at two batch sizes): the further one.
    queue = BatchQueue([b, c, d], continuous=False,
                       checkpointed=[((b.key, c.key), half), ((c.key, d.key), half + 1)])
    assert [batch.jobs for batch in iter(lambda: queue.take(lambda job: 4), None)] == [
        (c, d), (b,)]
    # Too early (3 jobs for almost all iterations > 2 jobs for all), a job gone, or jobs
    # that now go through slots and have checkpoints of their own as far: the batches are
    # cut as usual. So is a batch larger than any worker's batch size now (memory).
    for early, written, continuous, largest, own in [
            (1, [a], False, 4, {}), (half, [], False, 4, {}), (half, [a], False, 2, {}),
            (half, [a], True, 4, {c.key: half}), (half, [a], True, 4, {b.key: half + 5})]:
        queue = BatchQueue([b, c, d], continuous=continuous,
                           checkpointed=[((b.key, a.key, c.key), early)], written=written,
                           largest=lambda job, n=largest: n, own=own)
        usual = queue.take(lambda job: 2)
        assert usual is not None and usual.jobs[:2] == (b, c) and not usual.kept
    # A run stopped with --no-continuous and resumed in slots: the jobs have no checkpoint of
    # their own (or older ones), so the fixed batch resumes whole, then the rest in slots.
    for own in ({}, {b.key: half - 1}):
        queue = BatchQueue([b, c, d], continuous=True, checkpointed=saved, written=[a],
                           own=own)
        first = queue.take(lambda job: 4)
        assert first is not None and first.jobs == (b, a, c) and not first.slots, own
        rest = queue.take(lambda job: 4)
        assert rest is not None and rest.jobs == (d,) and rest.slots and not queue


def test_a_worker_on_another_machine_takes_the_run_s_limit_on_input_copies(tmp_path,
                                                                            monkeypatch):
    """STYLE_PIPELINE_INPUTS_MAX set where the run starts reaches a worker whose machine
    has none in its environment (a Ray node), as the storage options do."""
    import dataclasses

    from pipeline.accel.runtime import RuntimeOptions
    from pipeline.bulk.worker import WorkerConfig, start_worker
    from pipeline.io.copy_budget import INPUTS_MAX_ENV, configured_max

    monkeypatch.delenv(INPUTS_MAX_ENV, raising=False)
    config = WorkerConfig(tmp_path / "elsewhere", 0, RuntimeOptions(precision="fp32"), "abc")
    start_worker(0, "cpu", 1, config, lambda _: None, lambda: False)
    assert configured_max() is None
    start_worker(0, "cpu", 1, dataclasses.replace(config, inputs_max="5GB"), lambda _: None,
                 lambda: False)
    assert configured_max() == 5 * 10**9
