"""Ctrl-C and SIGTERM as a list the run loop reads, not as an exception.

A KeyboardInterrupt is raised wherever the main thread happens to be when Python gets round to
the signal: inside a multiprocessing finalizer or a `__del__` it is printed and dropped, and a
Ctrl-C that does nothing is the worst answer a long run can give. The C-level handler also
writes the signal number to the wakeup fd, whichever thread the kernel delivered it to; reading
that pipe is a record of every signal that cannot be lost. SIGTERM (what `kill`, schedulers and
container runtimes send) is taken like Ctrl-C: checkpoint and stop.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def stop_signals() -> Iterator[Callable[[], list[int]]]:
    """Yields `received()`: the SIGINT and SIGTERM numbers received since its last call, in
    order. Inside, neither raises nor ends the process. Outside the main thread (a program
    calling `runner.run` from a thread of its own) signals are not ours to take: `received()`
    stays empty."""
    if threading.current_thread() is not threading.main_thread():
        yield list
        return
    read_end, write_end = os.pipe()
    for fd in (read_end, write_end):
        os.set_blocking(fd, False)
    previous = {s: signal.signal(s, lambda _signum, _frame: None) for s in STOP_SIGNALS}
    previous_fd = signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)

    def received() -> list[int]:
        try:
            return [s for s in os.read(read_end, 4096) if s in STOP_SIGNALS]
        except BlockingIOError:
            return []

    try:
        yield received
    finally:
        signal.set_wakeup_fd(previous_fd)
        for s, handler in previous.items():
            signal.signal(s, handler)
        os.close(read_end)
        os.close(write_end)
