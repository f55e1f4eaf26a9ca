"""Reading ahead (bulk/reader.py): the next jobs' inputs read on a thread of their own, each
job's result or error handed over when it is taken."""

import threading

import pytest

from pipeline.bulk.reader import ReadAhead, read_depth
from pipeline.errors import InputError


def _reader(depth, fail=(), gate=None):
    reads = []

    def read(index):
        if gate is not None and index:
            gate.wait()
        reads.append(index)
        if index in fail:
            raise InputError(f"{index}.jpg: cannot decode")
        return index, threading.current_thread().name

    return ReadAhead(read, depth), reads


def test_the_next_jobs_are_read_on_a_thread_of_their_own():
    reader, reads = _reader(2)
    try:
        assert reader.take(0, [1, 2, 3]) == (0, "MainThread")  # nothing was read ahead yet
        for index, upcoming in ((1, [2, 3]), (2, [3]), (3, [])):
            got, thread = reader.take(index, upcoming)
            assert got == index and thread.startswith("read-ahead")
    finally:
        reader.close()
    assert sorted(reads) == [0, 1, 2, 3]


def test_a_read_ahead_error_is_raised_by_its_own_take_only():
    reader, _ = _reader(3, fail={2})
    try:
        assert reader.take(0, [1, 2, 3])[0] == 0
        assert reader.take(1, [2, 3])[0] == 1
        with pytest.raises(InputError, match=r"2\.jpg: cannot decode"):
            reader.take(2, [3])
        assert reader.take(3, [])[0] == 3
    finally:
        reader.close()


def test_reads_not_taken_are_dropped_on_close():
    gate = threading.Event()
    reader, reads = _reader(4, gate=gate)
    assert reader.take(0, [1, 2, 3, 4])[0] == 0
    closing = threading.Thread(target=reader.close)
    closing.start()
    while reader.ahead:  # cancelled, then forgotten; the read under way waits for the gate
        closing.join(0.01)
    gate.set()
    closing.join()
    assert reads[0] == 0 and len(reads) <= 2  # 0, and 1 if its read had begun


def test_reading_ahead_only_where_cores_would_idle():
    assert read_depth("cuda", 4, 8) == 8 and read_depth("cpu", 2, 4) == 4
    assert read_depth("cpu", 1, 4) == 0


def test_without_depth_each_job_is_read_when_taken():
    reader, _ = _reader(0)
    try:
        assert [reader.take(i, range(i + 1, 4))[1] for i in range(4)] == ["MainThread"] * 4
    finally:
        reader.close()


def test_a_batch_in_slots_reads_its_next_jobs_ahead(dataset, tmp_path, monkeypatch):
    """A worker of several threads: every job after the first is decoded on the read-ahead
    thread, and each is written."""
    import torch

    import pipeline.bulk.worker as worker_module
    from pipeline.accel.runtime import Runtime
    from pipeline.bulk.jobs import Batch, Inspector
    from pipeline.bulk.manifest import read_jobs

    out = tmp_path / "out"
    jobs = [Inspector()(j) for j in read_jobs(dataset, out, {"size": 32, "iterations": 2})]
    group = tuple(j for j in jobs if j.group == jobs[0].group)
    assert len(group) >= 3
    threads = {}
    prepare_job = worker_module.prepare_job

    def recorded(job, cache):
        threads[job.spec.row] = threading.current_thread().name
        return prepare_job(job, cache)

    monkeypatch.setattr(worker_module, "prepare_job", recorded)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)  # read_depth's view of the worker
    worker = worker_module.Worker(0, Runtime.create("cpu", "fp32", channels_last=False), out, 0,
                                  [].append)
    worker.run(Batch(group, slots=1))
    first, *rest = (threads[job.spec.row] for job in group)
    assert first == "MainThread" and all(name.startswith("read-ahead") for name in rest)
    assert all(job.spec.output.is_file() for job in group)
