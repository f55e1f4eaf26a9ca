"""Ctrl-C as a count the run loop reads, not as an exception.

A KeyboardInterrupt is raised wherever the main thread happens to be when Python gets round to
the signal: inside a multiprocessing finalizer or a `__del__` it is printed and dropped, and a
Ctrl-C that does nothing is the worst answer a long run can give. The C-level handler also
writes the signal number to the wakeup fd, whichever thread the kernel delivered it to; reading
that pipe is a record of every press that cannot be lost.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager


@contextmanager
def ctrl_c_presses() -> Iterator[Callable[[], int]]:
    """Yields `presses()`: the number of Ctrl-C (SIGINT) presses since its last call. Inside,
    Ctrl-C raises nothing. Outside the main thread (a program calling `runner.run` from a thread
    of its own) signals are not ours to take: `presses()` stays 0."""
    if threading.current_thread() is not threading.main_thread():
        yield lambda: 0
        return
    read_end, write_end = os.pipe()
    for fd in (read_end, write_end):
        os.set_blocking(fd, False)
    previous_handler = signal.signal(signal.SIGINT, lambda _signum, _frame: None)
    previous_fd = signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)

    def presses() -> int:
        try:
            return os.read(read_end, 4096).count(signal.SIGINT)
        except BlockingIOError:
            return 0

    try:
        yield presses
    finally:
        signal.set_wakeup_fd(previous_fd)
        signal.signal(signal.SIGINT, previous_handler)
        os.close(read_end)
        os.close(write_end)
