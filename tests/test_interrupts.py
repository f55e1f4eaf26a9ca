"""Ctrl-C and SIGTERM in the run loop: read from the wakeup pipe, whichever thread the kernel
picks."""

import os
import signal
import threading
import time

from pipeline.bulk.interrupts import stop_signals


def _collect(received, expected: int) -> list[int]:
    seen, deadline = [], time.time() + 10
    while len(seen) < expected and time.time() < deadline:
        seen += received()
        time.sleep(0.01)
    return seen


def test_every_press_is_counted_whichever_thread_receives_it():
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    idle = threading.Event()
    helper = threading.Thread(target=idle.wait, daemon=True)
    helper.start()
    with stop_signals() as received:
        os.kill(os.getpid(), signal.SIGINT)  # raises no KeyboardInterrupt in here
        signal.pthread_kill(helper.ident, signal.SIGINT)  # lands on a thread that is not main
        assert _collect(received, 2) == [signal.SIGINT] * 2
        os.kill(os.getpid(), signal.SIGTERM)  # does not end the process either
        assert _collect(received, 1) == [signal.SIGTERM]
        time.sleep(0.1)
        assert received() == []  # each signal is read once
    idle.set()
    assert {s: signal.getsignal(s) for s in before} == before


def test_outside_the_main_thread_ctrl_c_is_left_to_the_caller():
    before = signal.getsignal(signal.SIGINT)
    seen = []

    def body():
        with stop_signals() as received:
            seen.append(received())
            seen.append(signal.getsignal(signal.SIGINT))

    thread = threading.Thread(target=body)
    thread.start()
    thread.join()
    assert seen == [[], before]
