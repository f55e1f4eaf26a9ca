"""Ctrl-C in the run loop: counted from the wakeup pipe, whichever thread the kernel picks."""

import os
import signal
import threading
import time

from pipeline.interrupts import ctrl_c_presses


def _count(presses, expected: int) -> int:
    seen, deadline = 0, time.time() + 10
    while seen < expected and time.time() < deadline:
        seen += presses()
        time.sleep(0.01)
    return seen


def test_every_press_is_counted_whichever_thread_receives_it():
    before = signal.getsignal(signal.SIGINT)
    idle = threading.Event()
    helper = threading.Thread(target=idle.wait, daemon=True)
    helper.start()
    with ctrl_c_presses() as presses:
        os.kill(os.getpid(), signal.SIGINT)  # raises no KeyboardInterrupt in here
        signal.pthread_kill(helper.ident, signal.SIGINT)  # lands on a thread that is not main
        assert _count(presses, 2) == 2
        time.sleep(0.1)
        assert presses() == 0  # each press is read once
    idle.set()
    assert signal.getsignal(signal.SIGINT) is before


def test_outside_the_main_thread_ctrl_c_is_left_to_the_caller():
    before = signal.getsignal(signal.SIGINT)
    seen = []

    def body():
        with ctrl_c_presses() as presses:
            seen.append(presses())
            seen.append(signal.getsignal(signal.SIGINT))

    thread = threading.Thread(target=body)
    thread.start()
    thread.join()
    assert seen == [0, before]
